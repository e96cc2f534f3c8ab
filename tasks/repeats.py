"""Repeat purchases: whether a user may be recommended what they bought before.

Groceries, supplies and wholesale live on buying again; films and furniture do not. With
`ranking.repeat_purchases: auto` the run decides from its own data (the share of recent purchases that
repeat an item the user bought on an earlier day) and says what it chose and why; `allow` and `exclude`
decide by config. The decision is taken once per run, at the scoring cutoff, and kept in
`meta.repeat_decisions` so training, scoring, the report and a rerun that reuses cached features agree.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any

import duckdb

from tailor.config import Settings
from tailor.sql import ensure_table, query

log = logging.getLogger(__name__)

PURCHASE = "purchase"
DECISIONS_TABLE = "meta.repeat_decisions"
DECISION_COLUMNS = {
    "run_date": "date",
    "mode": "varchar",
    "is_allowed": "boolean",
    "repeat_share": "double",
    "n_purchases": "bigint",
    "reason": "varchar",
}


@dataclass(frozen=True)
class RepeatDecision:
    mode: str  # the configured ranking.repeat_purchases
    is_allowed: bool
    repeat_share: float
    n_purchases: int
    reason: str


def decide(con: duckdb.DuckDBPyConnection, settings: Settings, cutoff: datetime) -> RepeatDecision:
    ranking = settings.ranking
    n_purchases, _n_repeats, share = query(
        con,
        "features/repeat_purchase_share",
        {"cutoff": cutoff, "repeat_history_days": ranking.repeat_history_days},
    ).fetchall()[0]
    measured = (
        f"{share:.0%} of {n_purchases:,} purchases in the last {ranking.repeat_history_days} days "
        "repeat an item the customer bought before"
    )
    if ranking.repeat_purchases == "allow":
        return RepeatDecision("allow", True, float(share), int(n_purchases), f"allowed by config ({measured})")
    if ranking.repeat_purchases == "exclude":
        return RepeatDecision(
            "exclude", False, float(share), int(n_purchases), f"excluded by config ({measured})"
        )
    threshold = ranking.repeat_share_threshold
    allowed = n_purchases > 0 and share >= threshold
    verdict = "at least" if allowed else "below"
    return RepeatDecision(
        "auto",
        allowed,
        float(share),
        int(n_purchases),
        f"{'allowed' if allowed else 'excluded'}: {measured}, {verdict} the threshold of {threshold:.0%}",
    )


def save(con: duckdb.DuckDBPyConnection, run_date: date, decision: RepeatDecision) -> None:
    ensure_table(con, DECISIONS_TABLE, DECISION_COLUMNS)
    con.execute(f"delete from {DECISIONS_TABLE} where run_date = $run_date", {"run_date": run_date})
    con.execute(
        f"insert into {DECISIONS_TABLE} values ($run_date, $mode, $is_allowed, $repeat_share, $n_purchases, "
        "$reason)",
        {"run_date": run_date, **asdict(decision)},
    )


def load(con: duckdb.DuckDBPyConnection, run_date: date) -> RepeatDecision:
    ensure_table(con, DECISIONS_TABLE, DECISION_COLUMNS)
    rows = con.execute(
        f"select mode, is_allowed, repeat_share, n_purchases, reason from {DECISIONS_TABLE} "
        "where run_date = $run_date",
        {"run_date": run_date},
    ).fetchall()
    if not rows:
        raise LookupError(f"no repeat-purchase decision for the run of {run_date}: build its features first")
    mode, allowed, share, n_purchases, reason = rows[0]
    return RepeatDecision(mode, bool(allowed), float(share), int(n_purchases), reason)


def excluded_event_types(settings: Settings, decision: RepeatDecision) -> list[str]:
    """The event types that keep an item from being recommended to that user again."""
    others = [name for name in settings.ranking.excluded_event_types if name != PURCHASE]
    return others if decision.is_allowed else [*others, PURCHASE]


def summary(decision: RepeatDecision) -> dict[str, Any]:
    return asdict(decision)
