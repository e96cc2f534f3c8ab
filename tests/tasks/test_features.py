from __future__ import annotations

import shutil
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest

from tailor.config import load_settings
from tailor.tasks.extract import extract_sources
from tailor.tasks.features import (
    PER_CUTOFF_MODELS,
    RANKING_CUTOFF_MODELS,
    build_candidates,
    build_cutoff_features,
    build_features,
    build_staging_models,
    cutoffs_for,
    stage_user_sql_features,
)
from tailor.warehouse import connect, run_context

CUTOFF = datetime(2026, 11, 10)


def features_at_cutoff(company: Path, run_date: date) -> dict[str, pl.DataFrame]:
    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, run_date)
    extract_sources.fn(settings, ctx)
    with connect(settings) as con:
        build_staging_models(con, ctx, settings)
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
    from tailor.tasks.repeats import load as load_repeats

    settings, ctx, _, _ = trained_company
    # user_bucket says which bucket built a row: the one column that differs between the two builds
    tables = ("user_item_events", "user_item_similarity", "candidates", "ranking_examples")

    def snapshot() -> tuple[dict[str, list], dict[str, list]]:
        with connect(settings) as con:
            features.build_candidates(con, settings, ctx.cutoff, False, load_repeats(con, ctx.run_date))
            rows = {
                table: con.execute(
                    f"select * exclude (user_bucket) from features.{table} where cutoff = $c order by all"
                    if table != "ranking_examples"
                    else f"select * from features.{table} where cutoff = $c order by all",
                    {"c": ctx.cutoff},
                ).fetchall()
                for table in tables
            }
            users = {
                table: con.execute(
                    f"select user_bucket, list(distinct user_id) from features.{table} where cutoff = $c "
                    "group by user_bucket order by user_bucket",
                    {"c": ctx.cutoff},
                ).fetchall()
                for table in ("user_item_events", "candidates")
            }
        return rows, users

    one_pass, _ = snapshot()
    monkeypatch.setattr(features, "USERS_PER_BUCKET", 150)  # about five buckets of the small company
    bucketed, buckets = snapshot()
    monkeypatch.undo()
    snapshot()  # leave the shared warehouse as one pass built it
    for table in tables:
        assert len(bucketed[table]) == len(one_pass[table]) > 0, table
        assert bucketed[table] == one_pass[table], table
    # and the buckets really split the users: each holds some, none holds them all, none overlap, and the
    # events table (one pass for all buckets) puts each user in the bucket the candidates were built in
    total = len({row[1] for row in one_pass["ranking_examples"]})
    for table, per_bucket in buckets.items():
        sizes = [len(users) for _, users in per_bucket]
        assert len(per_bucket) > 1 and sum(sizes) == len({u for _, users in per_bucket for u in users}), table
        assert min(sizes) > 0 and max(sizes) < total, table
    events_bucket = {u: b for b, users in buckets["user_item_events"] for u in users}
    assert all(events_bucket.get(u, b) == b for b, users in buckets["candidates"] for u in users)


def test_user_item_events_hold_each_window_the_candidates_and_examples_read() -> None:
    """recent_days longer than 30 days: an item seen 40 days back is recent with no 30-day events; a
    purchase (an excluded type) 400 days back still excludes; an event after the cutoff is only the label;
    a user who is no candidate has no rows, and an event outside every window makes none."""
    from datetime import timedelta

    from tailor.sql import materialize_partition
    from tests import tiny

    cutoff = datetime(2026, 2, 20)  # a training cutoff: the label window lies before the run's cutoff

    def event(user: str, item: str, days: int, kind: str = "view") -> dict:
        return {"user_id": user, "item_id": item, "event_type": kind, "occurred_at": cutoff + timedelta(days)}

    con = tiny.warehouse()
    created = datetime(2024, 1, 1)
    tiny.insert(con, "users", [{"user_id": user, "created_at": created} for user in ("u1", "u2", "u3")])
    tiny.insert(con, "items", [{"published_at": created, **item} for item in (MILK, BREAD, EGGS)])
    tiny.insert(
        con,
        "interactions",
        [
            event("u1", "milk", -40),
            event("u1", "bread", -5),
            event("u1", "bread", -3, "purchase"),
            event("u1", "eggs", -400, "purchase"),
            event("u1", "milk", 2, "purchase"),
            event("u2", "eggs", -100),
            event("u3", "milk", -1),
        ],
    )
    build_staging_models(con, tiny.context())
    con.execute("create schema if not exists features")
    con.execute(
        "create table features.candidate_users as select $c as cutoff, user_id, "
        "cast(md5_number(user_id) % 1048576 as integer) as user_hash from (values ('u1'), ('u2')) t(user_id)",
        {"c": cutoff},
    )
    params = {"cutoff": cutoff, "recent_days": 45, "label_days": 7, "excluded_event_types": ["purchase"]}
    materialize_partition(con, "features/user_item_events", "cutoff", params, buckets=2)
    rows = {
        (row["user_id"], row["item_id"]): row
        for row in con.sql("select * from features.user_item_events").pl().to_dicts()
    }
    relevance = dict(
        con.execute(
            "select item_id || '@' || date_diff('day', $c, occurred_at), relevance "
            "from staging.stg_interactions where user_id = 'u1'",
            {"c": cutoff},
        ).fetchall()
    )
    assert set(rows) == {("u1", "milk"), ("u1", "bread"), ("u1", "eggs")}
    milk, bread, eggs = rows["u1", "milk"], rows["u1", "bread"], rows["u1", "eggs"]
    assert milk["n_user_item_events_30d"] == 0
    assert milk["max_user_item_relevance_30d"] is None and milk["last_event_at_30d"] is None
    assert milk["is_recently_seen"] and not milk["is_excluded"]
    assert milk["label_relevance"] == relevance["milk@2"] > 0
    assert bread["n_user_item_events_30d"] == 2
    assert bread["max_user_item_relevance_30d"] == max(relevance["bread@-5"], relevance["bread@-3"])
    assert bread["last_event_at_30d"] == cutoff - timedelta(days=3)
    assert bread["is_recently_seen"] and bread["is_excluded"] and bread["label_relevance"] is None
    assert not eggs["is_recently_seen"] and eggs["is_excluded"] and eggs["n_user_item_events_30d"] == 0
    # the bucket is the one the per-bucket models compute from the same hash
    hashes = dict(con.execute("select user_id, user_hash from features.candidate_users").fetchall())
    assert all(row["user_bucket"] == hashes[user] % 2 for (user, _), row in rows.items())


# --- retail facts: orders, returns and items never recommended, on hand-made rows -------------------


def retail_features(
    items: list[dict], events: list[dict], settings=None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(stg_interactions, stg_items, user_features, item_features) at the tiny run's cutoff."""
    from tailor.sql import materialize_partition
    from tests import tiny

    con = tiny.warehouse()
    tiny.insert(
        con, "users", [{"user_id": user, "created_at": datetime(2025, 1, 1)} for user in ("u1", "u2")]
    )
    tiny.insert(con, "items", [{"published_at": datetime(2025, 1, 1), **item} for item in items])
    tiny.insert(con, "interactions", events)
    build_staging_models(con, tiny.context(), settings)
    params = {"cutoff": tiny.CUTOFF, "cutoff_day": tiny.RUN_DATE, "popularity_days": 14, "attribute_names": []}
    stage_user_sql_features(con, settings or tiny.settings(), tiny.CUTOFF, tiny.RUN_DATE)
    for model in PER_CUTOFF_MODELS:
        materialize_partition(con, model, "cutoff", params)
    return tuple(
        con.sql(f"select * from {table} order by all").pl()
        for table in (
            "staging.stg_interactions",
            "staging.stg_items",
            "features.user_features",
            "features.item_features",
        )
    )  # type: ignore[return-value]


MILK = {"item_id": "milk", "title": "Milk", "category": "Dairy", "price_cents": 150}
BREAD = {"item_id": "bread", "title": "Bread", "category": "Bakery", "price_cents": 250}
EGGS = {"item_id": "eggs", "title": "Eggs", "category": "Dairy", "price_cents": 300}


def line(user: str, item: str, day: int, **facts) -> dict:
    return {
        "user_id": user,
        "item_id": item,
        "event_type": "purchase",
        "occurred_at": datetime(2026, 2, day, 10),
    } | facts


def test_a_basket_of_three_lines_is_one_purchase_and_lines_without_orders_count_each() -> None:
    events = [
        line("u1", "milk", 20, order_id="o1", quantity=2.0, unit_price_cents=150),
        line("u1", "bread", 20, order_id="o1", quantity=1.0, unit_price_cents=250),
        line("u1", "eggs", 20, order_id="o1", quantity=1.0, unit_price_cents=300),
        # a source without order columns: every purchase line is an order of its own
        line("u2", "milk", 20, value=150.0),
        line("u2", "bread", 20, value=250.0),
        line("u2", "eggs", 25, value=300.0),
    ]
    staged, _, users, _ = retail_features([MILK, BREAD, EGGS], events)
    by_user = {row["user_id"]: row for row in users.iter_rows(named=True)}
    assert by_user["u1"]["n_purchases_90d"] == 1 and by_user["u1"]["n_purchases_30d"] == 1
    assert by_user["u1"]["n_events_90d"] == 3  # events stay lines
    # the missing amount of a line is its units at their price
    assert by_user["u1"]["revenue_cents_90d"] == 2 * 150 + 250 + 300
    assert by_user["u2"]["n_purchases_90d"] == 3 and by_user["u2"]["revenue_cents_90d"] == 700
    assert staged.filter(pl.col("user_id") == "u1")["value"].sort().to_list() == [250.0, 300.0, 300.0]


def test_a_return_nets_revenue_and_is_not_a_purchase() -> None:
    events = [
        line("u1", "milk", 10, order_id="o1", quantity=4.0, unit_price_cents=150),
        line("u1", "bread", 10, order_id="o1", quantity=1.0, unit_price_cents=250),
        # a cancellation as retail exports write it: the purchase line again with a negative quantity
        line("u1", "milk", 20, order_id="C-o1", quantity=-2.0, unit_price_cents=150),
        # a return sent as its own event type, its amount given positive: staging makes it negative
        line("u1", "bread", 22, event_type="return", order_id="R-1", quantity=1.0, value=250.0),
    ]
    staged, _, users, items = retail_features([MILK, BREAD], events)
    returns = staged.filter(pl.col("event_type") == "return").sort("occurred_at")
    assert returns["value"].to_list() == [-300.0, -250.0] and returns["quantity"].to_list() == [-2.0, -1.0]
    assert staged.filter(pl.col("event_type") == "purchase").height == 2
    user = users.row(by_predicate=pl.col("user_id") == "u1", named=True)
    assert user["n_purchases_90d"] == 1  # the cancellation and the return are no purchase
    assert user["revenue_cents_90d"] == 4 * 150 + 250 - 300 - 250
    assert user["days_since_last_purchase"] == pytest.approx(20 - 10 / 24)  # the purchase, not the return
    milk = items.row(by_predicate=pl.col("item_id") == "milk", named=True)
    assert milk["n_purchases_recent"] == 0  # the return in the window is no purchase (the sale is older)


def test_exact_duplicates_go_but_the_same_item_in_two_orders_stays() -> None:
    same = line("u1", "milk", 20, order_id="o1", quantity=1.0, unit_price_cents=150)
    events = [same, same, line("u1", "milk", 20, order_id="o2", quantity=1.0, unit_price_cents=150)]
    staged, _, users, _ = retail_features([MILK], events)
    assert staged.height == 2
    assert users.row(by_predicate=pl.col("user_id") == "u1", named=True)["n_purchases_90d"] == 2


CATALOGUE = [
    MILK,
    {"item_id": "unleaded-95", "title": "Unleaded", "category": " Fuel ", "price_cents": 170},
    {"item_id": "Gift-25", "title": "Gift card", "category": "Cards", "price_cents": 2500},
    {"item_id": "gift_wrap", "title": "Gift wrap", "category": "Cards", "price_cents": 300},
    {"item_id": "bag", "title": "Carrier bag", "category": "Bags", "price_cents": 10},
    {"item_id": "tv", "title": "Television", "category": "Electronics", "price_cents": 99_900},
    {
        "item_id": "wipers",
        "title": "Wipers",
        "category": "Car",
        "department": "Forecourt",
        "price_cents": 900,
    },
    {
        "item_id": "rare",
        "title": "Out of stock",
        "category": "Dairy",
        "price_cents": 200,
        "is_available": False,
    },
    {"item_id": "unpriced", "title": "No price", "category": "Dairy"},
]
EXCLUDE = {
    "categories": ["FUEL"],
    "departments": ["forecourt"],
    "item_id_patterns": ["gift-%"],
    "min_price_cents": 50,
    "max_price_cents": 50_000,
}


def test_excluded_categories_departments_patterns_and_prices_are_never_live() -> None:
    from tests import tiny

    settings = tiny.settings(recommendations={"exclude": EXCLUDE})
    _, items, _, features = retail_features(CATALOGUE, [line("u1", "milk", 20)], settings)
    excluded_by = dict(zip(items["item_id"], items["excluded_by"], strict=True))
    assert excluded_by == {
        "milk": None,
        "unleaded-95": "categories",
        "Gift-25": "item_id_patterns",  # LIKE, case-insensitive
        "gift_wrap": None,  # the pattern's '-' is literal
        "bag": "min_price_cents",
        "tv": "max_price_cents",
        "wipers": "departments",
        "rare": "exclude_unavailable",
        "unpriced": None,  # an unknown price meets no price rule
    }
    live = dict(zip(features["item_id"], features["is_live"], strict=True))
    assert {item for item, is_live in live.items() if is_live} == {"milk", "gift_wrap", "unpriced"}
    assert (items["is_excluded"] == items["excluded_by"].is_not_null()).all()


def test_without_rules_only_unavailable_items_are_excluded_and_that_can_be_switched_off() -> None:
    from tests import tiny

    _, items, _, features = retail_features(CATALOGUE, [line("u1", "milk", 20)])
    assert items.filter(pl.col("is_excluded"))["item_id"].to_list() == ["rare"]
    assert features.filter(~pl.col("is_live"))["item_id"].to_list() == ["rare"]
    keep = tiny.settings(recommendations={"exclude": {"exclude_unavailable": False}})
    _, items, _, features = retail_features(CATALOGUE, [line("u1", "milk", 20)], keep)
    assert not items["is_excluded"].any() and features["is_live"].all()


def test_user_features_read_a_staging_copy_without_order_columns() -> None:
    """tailor/evaluate.py stages ratings as a six-column copy of stg_interactions: each line is a purchase."""
    from tailor.sql import materialize_partition
    from tests import tiny

    con = tiny.warehouse()
    tiny.insert(con, "users", [{"user_id": "u1", "created_at": datetime(2025, 1, 1)}])
    build_staging_models(con, tiny.context())
    con.execute(
        "create or replace table staging.stg_interactions as select * from (values "
        "('u1', 'milk', 'purchase', 4, 150.0, timestamp '2026-02-20 10:00'), "
        "('u1', 'eggs', 'purchase', 4, 300.0, timestamp '2026-02-20 10:00')) "
        "as t(user_id, item_id, event_type, relevance, value, occurred_at)"
    )
    params = {"cutoff": tiny.CUTOFF, "cutoff_day": tiny.RUN_DATE, "attribute_names": []}
    stage_user_sql_features(con, tiny.settings(), tiny.CUTOFF, tiny.RUN_DATE)
    materialize_partition(con, "features/user_features", "cutoff", params)
    assert con.execute(
        "select n_purchases_90d, revenue_cents_90d from features.user_features"
    ).fetchall() == [(2, 450.0)]


def test_a_full_history_in_one_undated_snapshot_gives_the_past_cutoffs_their_users(company: Path) -> None:
    from tests.conftest import RUN_DATE

    # the customers and products of all time, in one file without a date (what a first export looks like)
    for table in ("users", "items"):
        files = sorted((company / "sources" / table).glob("*.csv"))
        frames = [pl.read_csv(file, infer_schema_length=0) for file in files]
        for file in files:
            file.unlink()
        pl.concat(frames).write_csv(company / "sources" / table / "all.csv")
    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, RUN_DATE)
    extract_sources.fn(settings, ctx)
    build_features.fn(settings, ctx)
    earliest = min(cutoffs_for(settings, ctx).all())
    with connect(settings) as con:
        users = con.execute(
            "select count(*) from features.user_features where cutoff = $c", {"c": earliest}
        ).fetchall()[0][0]
        signed_up = con.execute(
            "select count(distinct user_id) from staging.stg_users where created_at < $c", {"c": earliest}
        ).fetchall()[0][0]
        items = con.execute(
            "select count(*) from features.item_features where cutoff = $c", {"c": earliest}
        ).fetchall()[0][0]
    assert users == signed_up > 0 and items > 0


def test_training_windows_before_the_data_fail_in_one_line_naming_what_to_change(company: Path) -> None:
    from tailor.errors import USER_ERRORS
    from tailor.tasks.features import TrainingWindowError
    from tests.conftest import RUN_DATE

    settings = load_settings(
        company / "tailor.yaml", {"propensity.training_windows": 12, "propensity.horizon_days": 7}
    )
    ctx = run_context(settings, RUN_DATE)
    extract_sources.fn(settings, ctx)
    with pytest.raises(TrainingWindowError) as raised:
        build_features.fn(settings, ctx)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("interactions: the earliest training cutoff is")
    assert "propensity.training_windows" in message and TrainingWindowError in USER_ERRORS


def test_buy_again_candidates_come_only_where_repeats_are_allowed(company: Path) -> None:
    from tailor.tasks.repeats import RepeatDecision
    from tests.conftest import RUN_DATE

    settings = load_settings(company / "tailor.yaml")
    ctx = run_context(settings, RUN_DATE)
    extract_sources.fn(settings, ctx)
    counts = {}
    with connect(settings) as con:
        build_staging_models(con, ctx, settings)
        build_cutoff_features(con, settings, ctx.cutoff, RUN_DATE, with_ranking=True)
        for allowed in (True, False):
            decision = RepeatDecision("allow" if allowed else "exclude", allowed, 0.5, 10, "test")
            build_candidates(con, settings, ctx.cutoff, False, decision)
            counts[allowed] = con.execute(
                "select count(*) filter (where c.is_from_buy_again), count(*) filter (where p.user_id is not null) "
                "from features.candidates c left join staging.stg_interactions p on p.user_id = c.user_id "
                "and p.item_id = c.item_id and p.event_type = 'purchase' where c.cutoff = $c",
                {"c": ctx.cutoff},
            ).fetchall()[0]
    # allowed: bought items come back as buy-again candidates; excluded: no candidate was ever bought
    assert counts[True][0] > 0 and counts[True][1] > 0
    assert counts[False] == (0, 0)


PAST_YEAR_SQL = """
-- the company's own features as of $cutoff: a year of behaviour, beyond Tailor's 90 days
select
    user_id,
    count(*) as n_events_365d,
    arg_max(event_type, occurred_at) as last_event_type
from staging.stg_interactions
where occurred_at < $cutoff and occurred_at >= $cutoff - interval 365 day
group by user_id
"""


def with_user_features(company: Path, sql: str, columns: dict[str, str]) -> None:
    import yaml

    (company / "past_year.sql").write_text(sql)
    config = yaml.safe_load((company / "tailor.yaml").read_text())
    config["user_features"] = config.get("user_features", {}) | {"sql": "past_year.sql", "sql_columns": columns}
    (company / "tailor.yaml").write_text(yaml.safe_dump(config))


def test_declared_attributes_and_sql_features_reach_the_user_features(company: Path) -> None:
    from tailor.tasks.train import CONVERSION_FEATURES, PROPENSITY_FEATURES, user_model_features

    with_user_features(company, PAST_YEAR_SQL, {"n_events_365d": "numeric", "last_event_type": "categorical"})
    frames = features_at_cutoff(company, date(2026, 11, 21))
    features = frames["features.user_features"]
    # the users files' own columns, as the file states them (the generated config declares them)
    users = pl.concat(
        [pl.read_csv(path) for path in sorted((company / "sources" / "users").glob("*.csv"))]
    ).unique("user_id", keep="last")
    joined = features.join(users.select("user_id", "coupon_share", "acquisition_channel"), on="user_id",
                           suffix="_file")  # fmt: skip
    assert joined.height == features.height > 0
    assert (joined["coupon_share"] == joined["coupon_share_file"]).all()
    assert (joined["acquisition_channel"] == joined["acquisition_channel_file"]).all()
    assert features.schema["coupon_share"] == pl.Float64 and features.schema["acquisition_channel"] == pl.String
    # the SQL features: counted before the cutoff only, typed as declared, absent users get none
    interactions = pl.concat(
        [pl.read_csv(p, try_parse_dates=True) for p in (company / "sources" / "interactions").glob("*.csv")]
    ).filter(pl.col("occurred_at") < CUTOFF)
    counts = interactions.group_by("user_id").agg(pl.len().alias("expected"))
    checked = features.join(counts, on="user_id", how="left").with_columns(pl.col("expected").fill_null(0))
    assert features.schema["n_events_365d"] == pl.Float64
    assert (checked["n_events_365d"].fill_null(0) == checked["expected"]).all()
    assert checked["expected"].max() > 0
    assert set(features["last_event_type"].drop_nulls()) <= {"view", "click", "add_to_cart", "purchase", "rating", "return"}
    # and every user-level model learns from them, unless config marks one sensitive
    settings = load_settings(company / "tailor.yaml")
    for base in (PROPENSITY_FEATURES, CONVERSION_FEATURES):
        chosen = user_model_features(base, settings)
        assert {"coupon_share", "acquisition_channel", "n_events_365d", "last_event_type"} <= set(chosen)
    sensitive = settings.model_copy(
        update={"privacy": settings.privacy.model_copy(
            update={"sensitive_attributes": ["age_band", "gender", "acquisition_channel"]})}
    )  # fmt: skip
    assert "acquisition_channel" not in user_model_features(PROPENSITY_FEATURES, sensitive)


@pytest.mark.parametrize(
    ("sql", "columns", "message"),
    [
        (PAST_YEAR_SQL, {"n_events_365d": "numeric"}, "not declared last_event_type"),
        (PAST_YEAR_SQL, {"n_events_365d": "numeric", "last_event_type": "categorical", "spend": "numeric"},
         "missing spend"),
        ("select user_id, 1 as n from staging.stg_users union all select user_id, 2 from staging.stg_users",
         {"n": "numeric"}, "more than one row"),
        ("select user_id, $horizon as n from staging.stg_users", {"n": "numeric"}, r"only \$cutoff"),
        ("select user_id, no_such_column as n from staging.stg_users", {"n": "numeric"}, "no_such_column"),
    ],
)  # fmt: skip
def test_a_broken_user_feature_sql_names_the_file_and_what_is_wrong(
    company: Path, sql: str, columns: dict[str, str], message: str
) -> None:
    from tailor.tasks.features import UserFeaturesError

    with_user_features(company, sql, columns)
    with pytest.raises(UserFeaturesError, match=f"user_features.sql past_year.sql: .*{message}"):
        features_at_cutoff(company, date(2026, 11, 21))


def test_another_nights_transient_features_are_dropped_tonights_kept() -> None:
    from tailor.tasks.features import TRANSIENT_MODELS, drop_other_nights_features
    from tests import tiny

    con = tiny.warehouse()
    con.execute("create schema if not exists features")
    con.execute("create table meta.feature_builds (run_date date, data_fingerprint varchar)")

    def night_built(run_date: date) -> None:
        con.execute("delete from meta.feature_builds")
        con.execute("insert into meta.feature_builds values ($d, 'f')", {"d": run_date})
        con.execute("create or replace table features.candidates as select 'u1' as user_id")
        con.execute("create or replace table features.user_features as select 'u1' as user_id")

    def tables() -> set[str]:
        rows = con.execute("select table_name from information_schema.tables where table_schema = 'features'")
        return {row[0] for row in rows.fetchall()}

    # a rerun of tonight keeps its build to reuse it
    night_built(tiny.RUN_DATE)
    assert not drop_other_nights_features(con, tiny.context())
    assert tables() == {"candidates", "user_features"}
    # last night's: the transient tables go, the per-cutoff features stay, and the build's record no longer
    # matches any night's data (a rerun of that night must build, not take the cached result)
    night_built(date(2026, 11, 1))
    assert drop_other_nights_features(con, tiny.context())
    assert "features/candidates" in TRANSIENT_MODELS and tables() == {"user_features"}
    assert con.execute("select data_fingerprint from meta.feature_builds").fetchall() == [("dropped",)]


def test_the_cached_build_names_one_cache_rule_so_prefect_warns_of_nothing(trained_company) -> None:
    import logging

    from prefect.cache_policies import CacheKeyFnPolicy

    from tailor.tasks.features import build_features_cached, features_cache_key

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.tasks")  # Prefect's warning of a task given two cache rules
    logger.addHandler(handler)
    try:
        cached = build_features_cached(trained_company[0], force=True)
    finally:
        logger.removeHandler(handler)
    assert not [record for record in records if "cache_key_fn" in record.getMessage()]
    assert isinstance(cached.cache_policy, CacheKeyFnPolicy)
    assert cached.cache_policy.cache_key_fn is features_cache_key and cached.refresh_cache is True
