from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path

import polars as pl
from tailor.tasks.extract import extract_sources
from tailor.tasks.features import (
    PER_CUTOFF_MODELS,
    RANKING_CUTOFF_MODELS,
    build_cutoff_features,
    build_features,
    build_staging_models,
    cutoffs_for,
)

from tailor.config import load_settings
from tailor.warehouse import connect, run_context

CUTOFF = datetime(2026, 11, 10)


def features_at_cutoff(company: Path, run_date: date) -> dict[str, pl.DataFrame]:
    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, run_date)
    extract_sources.fn(settings, ctx)
    with connect(settings) as con:
        build_staging_models(con, ctx)
        build_cutoff_features(con, settings, CUTOFF, CUTOFF.date(), with_ranking=True)
        frames = {}
        for model in PER_CUTOFF_MODELS + RANKING_CUTOFF_MODELS:
            table = model.replace("/", ".")
            frames[table] = con.sql(f"select * from {table} order by all").pl()
    return frames


def test_features_at_a_cutoff_ignore_everything_after_it(company: Path, tmp_path: Path) -> None:
    early = tmp_path / "early"
    shutil.copytree(company, early)
    for path in (early / "sources").rglob("*.csv"):
        if path.stem >= CUTOFF.date().isoformat():
            path.unlink()
    before = features_at_cutoff(early, CUTOFF.date())
    # ten more days of data, and a later file restating an item and a user known before the cutoff
    items = sorted((company / "sources" / "items").glob("*.csv"))[0].read_text().splitlines()
    restated_item = items[1].split(",")
    restated_item[-1] = "false" if restated_item[-1] == "true" else "true"
    (company / "sources" / "items" / "2026-11-15.csv").write_text(
        items[0] + "\n" + ",".join(restated_item) + "\n"
    )
    users = sorted((company / "sources" / "users").glob("*.csv"))[0].read_text().splitlines()
    restated_user = users[1].split(",")
    restated_user[2] = "XX"
    (company / "sources" / "users" / "2026-11-15.csv").write_text(
        users[0] + "\n" + ",".join(restated_user) + "\n"
    )
    after = features_at_cutoff(company, date(2026, 11, 21))
    for table, frame in before.items():
        other = after[table]
        assert frame.height > 0, table
        assert frame.equals(other), f"{table} changed when data after the cutoff arrived"


def test_latest_consent_wins_and_candidates_respect_it(company: Path) -> None:
    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, date(2026, 11, 21))
    extract_sources.fn(settings, ctx)
    with connect(settings) as con:
        con.execute(
            "insert into raw.consents (user_id, purpose, is_granted, updated_at, _source_file, _loaded_run_date) "
            "values ('u001', 'profiling', true, '2026-11-01 00:00:00', 'x', $d),"
            "('u001', 'profiling', false, '2026-11-15 00:00:00', 'x', $d)",
            {"d": ctx.run_date},
        )
    build_features.fn(settings, ctx)
    with connect(settings) as con:
        latest = con.execute(
            "select is_granted from staging.stg_consents where user_id = 'u001' and purpose = 'profiling' "
            "and is_latest"
        ).fetchall()
        in_candidates = con.execute(
            "select count(*) from features.candidates where user_id = 'u001' and cutoff = $c",
            {"c": ctx.cutoff},
        ).fetchall()[0][0]
        bought_recommended = con.execute(
            """
            select count(*) from features.candidates c
            join staging.stg_interactions i using (user_id, item_id)
            where i.event_type = 'purchase' and i.occurred_at < c.cutoff
            """
        ).fetchall()[0][0]
    assert latest == [(False,)]
    assert in_candidates == 0
    assert bought_recommended == 0


def test_training_cutoffs_leave_room_for_labels() -> None:
    settings = load_settings(Path(__file__).resolve().parents[2] / "config" / "demo.yaml")
    ctx = run_context(settings, date(2026, 11, 21))
    cuts = cutoffs_for(settings, ctx)
    assert cuts.ranking_holdout == datetime(2026, 11, 14) and cuts.ranking_train == datetime(2026, 11, 7)
    assert cuts.score == datetime(2026, 11, 21) and cuts.all()[-1] == cuts.score


def test_candidates_built_in_user_buckets_equal_one_pass(trained_company, monkeypatch) -> None:
    from tailor.tasks import features

    settings, ctx, _, _ = trained_company
    tables = ("user_item_similarity", "candidates", "ranking_examples")

    def snapshot() -> dict[str, list]:
        with connect(settings) as con:
            features.build_candidates(con, settings, ctx.cutoff, False)
            return {
                table: con.execute(
                    f"select * from features.{table} where cutoff = $c order by all", {"c": ctx.cutoff}
                ).fetchall()
                for table in tables
            }

    one_pass = snapshot()
    monkeypatch.setattr(features, "USERS_PER_BUCKET", 150)  # about five buckets of the small company
    bucketed = snapshot()
    monkeypatch.undo()
    snapshot()  # leave the shared warehouse as one pass built it
    for table in tables:
        assert len(bucketed[table]) == len(one_pass[table]) > 0, table
        assert bucketed[table] == one_pass[table], table
    # and the buckets really split the users: each holds some, none holds them all, none overlap
    from tailor.sql import bind, read_sql

    text = read_sql("features/ranking_examples")
    with connect(settings) as con:
        users_per_bucket = [
            con.execute(
                f"select count(distinct user_id) from ({text})",
                bind(text, {"cutoff": ctx.cutoff, "label_days": 7, "bucket": bucket, "buckets": 5}),
            ).fetchall()[0][0]
            for bucket in range(5)
        ]
    total = len({row[1] for row in one_pass["ranking_examples"]})
    assert sum(users_per_bucket) == total and min(users_per_bucket) > 0 and max(users_per_bucket) < total
