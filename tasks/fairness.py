"""The fairness audit, every run: for each sensitive attribute and group, how often the group is selected
by each campaign, given each variant, recommended each item category, and its mean propensity score, with
the disparate-impact ratio against the most-favoured group (the four-fifths rule).

A ratio is flagged when it is under `fairness.min_ratio`, the group has at least `fairness.min_group_users`
users, and the gap to the most-favoured group is statistically significant (two-proportion z-test for
shares, Welch's test for the mean score; Holm-adjusted over the whole audit, which makes hundreds of
comparisons), so noise does not raise alarms. With
`fairness.fail_on_flag` a flag fails the run before anything is published.

Users whose group is unknown (missing, blank or 'unknown') are not a group that can be treated unfairly as
such: their rows are reported apart (`is_unknown_group`), never the reference, never in the Holm family
and never flagged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import duckdb
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import human, stats
from tailor.config import Settings
from tailor.progress import reported
from tailor.sql import ensure_table, query, replace_run_rows
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

AUDIT_COLUMNS = {
    "run_date": "date", "attribute": "varchar", "group_value": "varchar", "subject": "varchar",
    "subject_id": "varchar", "metric": "varchar", "users": "bigint", "value": "double",
    "reference_group": "varchar", "reference_value": "double", "disparate_impact_ratio": "double",
    "p_value": "double", "p_value_adjusted": "double", "is_small_group": "boolean", "is_flagged": "boolean",
    # last: a table created before it gets it appended (ensure_audit_table), in the same place
    "is_unknown_group": "boolean",
}  # fmt: skip
UNKNOWN_GROUP = "unknown"


class FairnessError(RuntimeError):
    """A disparate-impact ratio under the threshold, with fairness.fail_on_flag set."""


def ensure_audit_table(con: duckdb.DuckDBPyConnection) -> None:
    ensure_table(con, "meta.fairness_audit", AUDIT_COLUMNS)
    con.execute("alter table meta.fairness_audit add column if not exists is_unknown_group boolean")


def is_unknown(group_value: str | None) -> bool:
    """A missing, blank or 'unknown' group: the same test as sql/marts/fairness_rates.sql."""
    return group_value is None or group_value.strip().lower() in ("", UNKNOWN_GROUP)


def gap_p_value(row: dict[str, Any], reference: dict[str, Any]) -> float:
    """Is the group's value different from the most-favoured group's beyond chance?"""
    if row["metric"] == "mean_score":
        if row["users"] < 2 or reference["users"] < 2:
            return math.nan
        return stats.welch(
            stats.Sample(reference["users"], reference["value"], reference["variance"] or 0.0),
            stats.Sample(row["users"], row["value"], row["variance"] or 0.0),
        ).p_value
    return stats.two_proportions(
        stats.Sample.of_counts(int(reference["hits"]), int(reference["users"])),
        stats.Sample.of_counts(int(row["hits"]), int(row["users"])),
    ).p_value


def audit_rows(rates: pl.DataFrame, settings: Settings, ctx: RunContext) -> list[dict[str, Any]]:
    config = settings.fairness
    rows = []
    for _, frame in rates.group_by("attribute", "subject", "subject_id", "metric", maintain_order=True):
        groups = frame.to_dicts()
        eligible = [
            g for g in groups if g["users"] >= config.min_group_users and not is_unknown(g["group_value"])
        ]
        # the most-favoured group: the highest rate among known groups large enough to count (ties: by name)
        reference = max(eligible, key=lambda g: (g["value"], g["group_value"])) if eligible else None
        for group in groups:
            small = group["users"] < config.min_group_users
            unknown = is_unknown(group["group_value"])
            ratio = p_value = math.nan
            if reference is not None and reference["value"]:
                ratio = group["value"] / reference["value"]
                p_value = 1.0 if group is reference else gap_p_value(group, reference)
            rows.append(
                {
                    "run_date": ctx.run_date,
                    "attribute": group["attribute"],
                    "group_value": group["group_value"],
                    "subject": group["subject"],
                    "subject_id": group["subject_id"],
                    "metric": group["metric"],
                    "users": group["users"],
                    "value": group["value"],
                    "reference_group": reference["group_value"] if reference else None,
                    "reference_value": reference["value"] if reference else None,
                    "disparate_impact_ratio": None if math.isnan(ratio) else ratio,
                    "p_value": None if math.isnan(p_value) else p_value,
                    "p_value_adjusted": None,
                    "is_small_group": small,
                    "is_flagged": False,
                    "is_unknown_group": unknown,
                    "_below": not small and not unknown and ratio < config.min_ratio,
                }
            )
    # an unknown group's gap is shown, not tested: it would only dilute the real comparisons' adjustment
    tested = [
        row
        for row in rows
        if row["p_value"] is not None
        and row["group_value"] != row["reference_group"]
        and not row["is_unknown_group"]
    ]
    for row, adjusted in zip(
        tested, stats.adjust_p_values([r["p_value"] for r in tested], "holm"), strict=True
    ):
        row["p_value_adjusted"] = adjusted
        row["is_flagged"] = bool(row["_below"] and adjusted < config.alpha)
    for row in rows:
        del row["_below"]
    return rows


def describe(row: dict[str, Any]) -> str:
    """A flagged gap in a sentence, its adjusted p-value in plain decimals ("adjusted p < 0.001")."""
    return (
        f"{row['attribute']}={row['group_value']}: {row['metric']} of {row['subject']} {row['subject_id']} "
        f"is {row['disparate_impact_ratio']:.2f} of {row['attribute']}={row['reference_group']}'s "
        f"({human.p_phrase(row['p_value_adjusted'], 'adjusted p')})"
    )


@task(name="fairness-audit", cache_policy=NO_CACHE)
@reported("fairness-audit")
def audit_fairness(settings: Settings, ctx: RunContext) -> dict[str, Any]:
    """Store tonight's audit in meta.fairness_audit; fail the run on a flag when config says so."""
    attributes = settings.privacy.sensitive_attributes
    with connect(settings) as con:
        ensure_audit_table(con)
        rows: list[dict[str, Any]] = []
        if settings.fairness.enabled and attributes:
            rates = query(con, "marts/fairness_rates", {"attributes": attributes}).pl()
            rows = audit_rows(rates, settings, ctx)
        replace_run_rows(con, "meta.fairness_audit", AUDIT_COLUMNS, rows, ctx.run_date)
    flagged = [row for row in rows if row["is_flagged"]]
    for row in flagged:
        log.warning("fairness: %s, under %s", describe(row), human.setting(settings.fairness.min_ratio))
    if flagged and settings.fairness.fail_on_flag:
        raise FairnessError(
            f"fairness audit: {len(flagged)} disparate-impact ratio(s) under "
            f"{human.setting(settings.fairness.min_ratio)}, "
            f"nothing published: " + "; ".join(describe(row) for row in flagged[:5])
        )
    return {
        "attributes": attributes,
        "rows": len(rows),
        "flagged": [describe(row) for row in flagged],
        "unknown_group_users": unknown_group_users(rows),
    }


def unknown_group_users(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Per attribute, how many users' group is unknown (the largest count over its subjects: each
    subject counts the users it is over)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["is_unknown_group"]:
            counts[row["attribute"]] = max(counts.get(row["attribute"], 0), int(row["users"]))
    return dict(sorted(counts.items()))
