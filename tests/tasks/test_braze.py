"""Braze's incremental feeds on a hand-made warehouse: which users each night sends, when what Braze holds
moves, and UPDATED_AT across nights, reruns and backfills (tasks/braze.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tailor.tasks.braze import braze_manifest, build_braze_feeds, record_published, stamp_text
from tailor.warehouse import RunContext, connect
from tests import tiny

USERS = ("u1", "u2", "u3")
START = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
CUTOFFS = [tiny.CUTOFF + timedelta(days=n) for n in range(4)]  # the nights' cutoffs


@pytest.fixture
def shop(tmp_path: Path):
    """Three users with recommendations and a campaign variant each; settings publish external ids."""
    settings = tiny.settings(warehouse={"path": str(tmp_path / "warehouse.duckdb")})
    with connect(settings) as con:
        con.execute("create schema marts")
        con.execute(
            "create table marts.recommendations (user_id varchar, item_id varchar, rank bigint, "
            "is_personalized boolean, channels varchar)"
        )
        con.execute(
            "create table marts.content (user_id varchar, campaign_id varchar, variant_id varchar, "
            "consent_purpose varchar, is_personalized boolean)"
        )
        con.execute("create table marts.segments (user_id varchar, rfm_segment varchar)")
        con.execute("create table marts.user_scores (user_id varchar, propensity_decile bigint)")
        # what each user may be recommended tonight: the items above and i9, for every user
        con.execute("create schema features")
        con.execute("create table features.candidates (cutoff timestamp, user_id varchar, item_id varchar)")
        for user in USERS:
            con.execute(
                "insert into marts.recommendations values ($u, 'i1', 1, true, 'email'), ($u, 'i2', 2, true, 'email')",
                {"u": user},
            )
            con.execute(
                "insert into marts.content values ($u, 'digest', 'a', 'marketing_email', false)", {"u": user}
            )
            con.execute("insert into marts.segments values ($u, 'loyal')", {"u": user})
            con.execute("insert into marts.user_scores values ($u, 3)", {"u": user})
            for item in ("i1", "i2", "i3", "i4", "i9"):
                con.execute(
                    "insert into features.candidates select cutoff, $u, $i from (select unnest($cutoffs) as cutoff)",
                    {"u": user, "i": item, "cutoffs": CUTOFFS},
                )
    return settings, tiny.context(tmp_path)


def night(settings, ctx: RunContext, now: datetime, publish: bool = True) -> dict:
    """Build the feeds as write_datasets does and, when `publish`, record them as the upload does."""
    with connect(settings) as con:
        updated_at = build_braze_feeds(con, settings, ctx, now)
        updates = dict(con.execute("select external_id, updated_at from marts.user_updates").fetchall())
        deletes = dict(con.execute("select external_id, updated_at from marts.user_deletes").fetchall())
    if publish:
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        files = {"files": []}
        entry = braze_manifest(
            {"user_updates": files, "user_deletes": files}, ctx.run_date, updated_at, "external"
        )
        (ctx.run_dir / "manifest.json").write_text(json.dumps({"braze": entry}))
        record_published(settings, ctx, ctx.run_dir, now)
    return {"updated_at": updated_at, "updates": updates, "deletes": deletes}


def change(settings, sql: str, user: str) -> None:
    with connect(settings) as con:
        con.execute(sql, {"u": user})


def next_day(ctx: RunContext, days: int = 1) -> RunContext:
    return replace(
        ctx,
        run_date=ctx.run_date + timedelta(days=days),
        cutoff=ctx.cutoff + timedelta(days=days),
        run_dir=ctx.run_dir.parent / f"run{days}",
    )


def test_a_changed_user_alone_is_sent_later_and_a_rerun_later_still(shop) -> None:
    settings, ctx = shop
    first = night(settings, ctx, START)
    assert set(first["updates"]) == set(USERS) and first["deletes"] == {}
    assert set(first["updates"].values()) == {first["updated_at"]}

    change(settings, "update marts.recommendations set item_id = 'i9' where user_id = $u and rank = 2", "u2")
    tomorrow = next_day(ctx)
    second = night(settings, tomorrow, START + timedelta(days=1))
    assert list(second["updates"]) == ["u2"] and second["updated_at"] > first["updated_at"]
    # a rerun of the night: the same user, later again, even with a clock that went back
    rerun = night(settings, tomorrow, START)
    assert list(rerun["updates"]) == ["u2"] and rerun["updated_at"] == second["updated_at"] + timedelta(
        microseconds=1
    )

    # nothing changed: an empty feed, not a snapshot
    quiet = night(settings, next_day(ctx, 2), START + timedelta(days=2))
    assert quiet["updates"] == {} and quiet["deletes"] == {}


def test_the_state_moves_only_when_a_night_is_published(shop) -> None:
    settings, ctx = shop
    night(settings, ctx, START)
    change(settings, "update marts.segments set rfm_segment = 'lapsed' where user_id = $u", "u1")
    unpublished = night(settings, next_day(ctx), START + timedelta(days=1), publish=False)
    assert list(unpublished["updates"]) == ["u1"]
    # the night failed after writing its files: the next night still sends u1, later than anything written
    later = night(settings, next_day(ctx, 2), START + timedelta(days=2))
    assert list(later["updates"]) == ["u1"] and later["updated_at"] > unpublished["updated_at"]
    with connect(settings) as con:
        logged = con.execute(
            "select EXTERNAL_ID, UPDATED_AT from marts.braze_user_updates order by 2, 1"
        ).fetchall()
        publishes = con.execute(
            "select run_date, user_updates from meta.braze_publishes order by 1"
        ).fetchall()
    assert logged == [*((u, START.replace(tzinfo=None)) for u in USERS), ("u1", later["updated_at"])]
    assert publishes == [(ctx.run_date, 3), (ctx.run_date + timedelta(days=2), 1)]


def test_users_who_leave_or_are_erased_go_to_the_deletes_once(shop) -> None:
    from tailor.tasks.privacy import erase_everywhere

    settings, ctx = shop
    night(settings, ctx, START)
    with connect(settings) as con:
        # u3 asks to be erased: every table with a user_id loses them, their payload log included
        con.execute("create temp table erase_ids as select 'u3' as user_id")
        erase_everywhere(con)
        assert con.execute(
            "select count(*) from marts.braze_user_updates where EXTERNAL_ID = 'u3'"
        ).fetchall() == [(0,)]
    change(settings, "delete from marts.content where user_id = $u", "u1")  # u1 withdrew e-mail consent
    change(settings, "delete from marts.recommendations where user_id = $u", "u1")
    change(settings, "delete from marts.segments where user_id = $u", "u1")
    change(settings, "delete from marts.user_scores where user_id = $u", "u1")
    tomorrow = next_day(ctx)
    gone = night(settings, tomorrow, START + timedelta(days=1))
    assert gone["updates"] == {} and sorted(gone["deletes"]) == ["u1", "u3"]
    assert set(gone["deletes"].values()) == {gone["updated_at"]}
    # a rerun of that night deletes them again (its files differ only in UPDATED_AT)
    assert sorted(night(settings, tomorrow, START + timedelta(days=1, hours=1))["deletes"]) == ["u1", "u3"]
    # the next night: nothing left to delete, and Braze's state forgets them
    assert night(settings, next_day(ctx, 2), START + timedelta(days=2))["deletes"] == {}
    with connect(settings) as con:
        held = con.execute("select distinct external_id from meta.braze_user_state order by 1").fetchall()
        deleted = con.execute(
            "select distinct EXTERNAL_ID from marts.braze_user_deletes order by 1"
        ).fetchall()
    assert held == [("u2",)] and deleted == [("u1",), ("u3",)]


def test_a_rerun_on_changed_inputs_corrects_what_the_first_run_sent(shop) -> None:
    settings, ctx = shop
    night(settings, ctx, START)
    tomorrow = next_day(ctx)
    change(settings, "update marts.user_scores set propensity_decile = 9 where user_id = $u", "u1")
    assert list(night(settings, tomorrow, START + timedelta(days=1))["updates"]) == ["u1"]
    # the night is rerun after the score was corrected back: u1's payload is the one from before the night,
    # but Braze holds the one the first run sent, so u1 is sent again
    change(settings, "update marts.user_scores set propensity_decile = 3 where user_id = $u", "u1")
    assert list(night(settings, tomorrow, START + timedelta(days=1, hours=1))["updates"]) == ["u1"]
    assert night(settings, next_day(ctx, 2), START + timedelta(days=2))["updates"] == {}


def test_updated_at_is_a_utc_timestamp_text_in_the_manifest(shop) -> None:
    settings, ctx = shop
    first = night(settings, ctx, START)
    assert stamp_text(first["updated_at"]) == "2026-03-02T02:00:00Z"
    entry = json.loads((ctx.run_dir / "manifest.json").read_text())["braze"]
    assert entry["updated_at"] == "2026-03-02T02:00:00Z" and entry["prefix"] == "braze/"


def test_a_night_with_no_payload_at_all_deletes_everyone_braze_holds(shop) -> None:
    settings, ctx = shop
    night(settings, ctx, START)
    with connect(settings) as con:
        for table in ("recommendations", "content", "segments", "user_scores"):
            con.execute(f"delete from marts.{table}")
    empty = night(settings, next_day(ctx), START + timedelta(days=1))
    assert empty["updates"] == {} and sorted(empty["deletes"]) == list(USERS)


def test_small_moves_are_not_sent_and_never_add_up(shop) -> None:
    settings, ctx = shop
    change(settings, "insert into marts.recommendations values ($u, 'i3', 3, true, 'email'), "
           "($u, 'i4', 4, true, 'email')", "u1")  # fmt: skip
    night(settings, ctx, START)
    # a new order, one item of four replaced by another (25%, under publish.braze's 30%), the decile one up
    change(settings, "update marts.recommendations set rank = 3 - rank where user_id = $u and rank <= 2", "u1")
    change(settings, "update marts.recommendations set item_id = 'i9' where user_id = $u and rank = 4", "u1")
    change(settings, "update marts.user_scores set propensity_decile = 4 where user_id = $u", "u1")
    assert night(settings, next_day(ctx), START + timedelta(days=1))["updates"] == {}
    # one more up: two from what Braze holds, though one from last night's
    change(settings, "update marts.user_scores set propensity_decile = 5 where user_id = $u", "u1")
    assert list(night(settings, next_day(ctx, 2), START + timedelta(days=2))["updates"]) == ["u1"]


def test_a_held_item_that_can_no_longer_be_recommended_is_replaced_at_once(shop) -> None:
    settings, ctx = shop
    change(settings, "insert into marts.recommendations values ($u, 'i3', 3, true, 'email'), "
           "($u, 'i4', 4, true, 'email')", "u1")  # fmt: skip
    night(settings, ctx, START)
    # u1 bought i4 (or it went out of stock): no longer a candidate, so a quarter of the list is enough
    with connect(settings) as con:
        con.execute("delete from features.candidates where user_id = 'u1' and item_id = 'i4'")
    change(settings, "update marts.recommendations set item_id = 'i9' where user_id = $u and rank = 4", "u1")
    assert list(night(settings, next_day(ctx), START + timedelta(days=1))["updates"]) == ["u1"]


def test_exact_settings_send_every_change(shop) -> None:
    settings, ctx = shop
    braze = settings.publish.braze.model_copy(update={"recommendations_changed_share": 0, "decile_min_move": 1})
    settings = settings.model_copy(
        update={"publish": settings.publish.model_copy(update={"braze": braze})}
    )
    night(settings, ctx, START)
    change(settings, "update marts.user_scores set propensity_decile = 4 where user_id = $u", "u1")
    change(settings, "update marts.recommendations set item_id = 'i3' where user_id = $u and rank = 2", "u3")
    change(settings, "update marts.recommendations set rank = 3 - rank where user_id = $u", "u2")
    # the decile and the items are sent; a new order alone is not
    assert sorted(night(settings, next_day(ctx), START + timedelta(days=1))["updates"]) == ["u1", "u3"]
