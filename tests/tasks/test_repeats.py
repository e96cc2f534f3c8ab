from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from tailor.config import RankingConfig
from tailor.sql import materialize
from tailor.tasks.repeats import decide, excluded_event_types, load, save

CUTOFF = datetime(2026, 11, 20)


def purchases_con(rows: list[tuple[str, str, str]]) -> duckdb.DuckDBPyConnection:
    """A warehouse whose staged interactions are these purchases (user, item, day)."""
    con = duckdb.connect()
    con.execute("create schema staging")
    con.execute(
        "create table staging.stg_interactions (user_id varchar, item_id varchar, event_type varchar, "
        "occurred_at timestamp)"
    )
    con.executemany(
        "insert into staging.stg_interactions values (?, ?, 'purchase', ?)",
        [(user, item, datetime.fromisoformat(day)) for user, item, day in rows],
    )
    materialize(con, "staging/stg_purchase_days")
    return con


def with_ranking(settings, **changes):
    return settings.model_copy(update={"ranking": RankingConfig(**changes)})


# u1 buys milk every week (3 of 4 purchases repeat it); u2 buys one film
GROCER = [("u1", "milk", "2026-11-01"), ("u1", "milk", "2026-11-08"), ("u1", "milk", "2026-11-15"),
          ("u1", "milk", "2026-11-15"), ("u2", "film", "2026-11-10")]  # fmt: skip


def test_auto_allows_repeats_when_enough_purchases_repeat_and_says_why(trained_company) -> None:
    settings = with_ranking(trained_company[0], repeat_share_threshold=0.2)
    decision = decide(purchases_con(GROCER), settings, CUTOFF)
    # the same item twice on one day is one purchase: 4 purchase days, 2 of them repeats
    assert decision.n_purchases == 4 and decision.repeat_share == pytest.approx(0.5)
    assert decision.is_allowed and "50%" in decision.reason and "allowed" in decision.reason
    assert "purchase" not in excluded_event_types(settings, decision)


def test_auto_excludes_repeats_below_the_threshold_and_config_overrides(trained_company) -> None:
    con = purchases_con(GROCER)
    strict = with_ranking(trained_company[0], repeat_share_threshold=0.6)
    assert not decide(con, strict, CUTOFF).is_allowed
    assert "purchase" in excluded_event_types(strict, decide(con, strict, CUTOFF))
    assert decide(con, with_ranking(trained_company[0], repeat_purchases="allow", repeat_share_threshold=0.6),
                  CUTOFF).is_allowed  # fmt: skip
    films = purchases_con([("u2", "film", "2026-11-10"), ("u3", "book", "2026-11-11")])
    assert not decide(films, with_ranking(trained_company[0]), CUTOFF).is_allowed
    assert decide(films, with_ranking(trained_company[0], repeat_purchases="allow"), CUTOFF).is_allowed


def test_a_decision_is_kept_per_run_and_a_rerun_replaces_it(trained_company) -> None:
    con = purchases_con(GROCER)
    settings = with_ranking(trained_company[0])
    first = decide(con, settings, CUTOFF)
    save(con, CUTOFF.date(), first)
    save(con, CUTOFF.date(), first)
    assert load(con, CUTOFF.date()) == first
    assert con.execute("select count(*) from meta.repeat_decisions").fetchall()[0][0] == 1
    with pytest.raises(LookupError):
        load(con, datetime(2026, 11, 21).date())
