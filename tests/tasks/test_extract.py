from __future__ import annotations

from datetime import date
from pathlib import Path

import boto3
import duckdb
import pytest
import yaml

from tailor.config import load_settings
from tailor.tasks.extract import ExtractError, extract_sources
from tailor.warehouse import connect, run_context
from tests.conftest import TEST_BUCKET

USERS = "uid,signed_up,country\nu1,2026-01-01 10:00:00,DE\nu2,2026-01-02 11:00:00,FR\n"
CONSENTS = "user_id,purpose,is_granted,updated_at\nu1,profiling,true,2026-01-01 10:00:00\n"
ITEMS = "item_id,title,category,published_at\ni1,Lamp,home,2025-12-01 00:00:00\n"


def interactions(day: str, n: int = 2) -> str:
    rows = "".join(f"u1,i1,view,{day} 0{h}:00:00,\n" for h in range(n))
    return "user_id,item_id,event_type,occurred_at,value\n" + rows


def make_company(root: Path, extra_sources: dict | None = None) -> Path:
    files = {
        "users/2026-01-02.csv": USERS,
        "consents/2026-01-02.csv": CONSENTS,
        "items/2026-01-02.csv": ITEMS,
        "interactions/2026-01-02.csv": interactions("2026-01-02"),
        "interactions/2026-01-03.csv": interactions("2026-01-03", 3),
    }
    for relative, text in files.items():
        path = root / "sources" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = {
        "project": "tiny",
        "sources": {
            "users": {
                "path": "sources/users/*.csv",
                "columns": {"user_id": "uid", "created_at": "signed_up"},
            },
            "consents": {"path": "sources/consents/*.csv"},
            "items": {"path": "sources/items/*.csv"},
            "interactions": {"path": "sources/interactions/*.csv"},
            **(extra_sources or {}),
        },
        "publish": {"target": "file://published", "published_user_id": "external"},
    }
    (root / "tailor.yaml").write_text(yaml.safe_dump(config))
    return root / "tailor.yaml"


def raw_count(settings, table: str) -> int:
    with connect(settings) as con:
        return con.execute(f"select count(*) from raw.{table}").fetchall()[0][0]


def test_maps_columns_and_sees_only_files_before_the_run_date(tmp_path: Path) -> None:
    settings = load_settings(make_company(tmp_path))
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["interactions"].rows_loaded == 2  # the 2026-01-03 file is not yet due
    assert loads["interactions"].watermark == "2026-01-02"
    with connect(settings) as con:
        rows = con.execute("select user_id, created_at, country from raw.users order by user_id").fetchall()
    assert rows[0][0] == "u1" and rows[0][2] == "DE" and str(rows[0][1]) == "2026-01-01 10:00:00"


def test_rerun_replaces_and_next_night_adds_only_new_files(tmp_path: Path) -> None:
    settings = load_settings(make_company(tmp_path))
    for _ in range(2):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert raw_count(settings, "interactions") == 2
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert loads["interactions"].files_loaded == 1 and loads["interactions"].rows_loaded == 3
    assert loads["users"].files_loaded == 0
    assert raw_count(settings, "interactions") == 5
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert raw_count(settings, "interactions") == 5


def test_missing_mapped_column_names_file_and_column(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/users/2026-01-02.csv").write_text("uid,country\nu1,DE\n")
    settings = load_settings(config)
    with pytest.raises(ExtractError) as error:
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    message = str(error.value)
    assert "users/2026-01-02.csv" in message and "'signed_up'" in message and "users.created_at" in message


def test_a_changed_type_names_the_column_and_keeps_nothing_of_the_source(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/interactions/2026-01-01.csv").write_text(interactions("2026-01-01"))
    (tmp_path / "sources/interactions/2026-01-02.csv").write_text(
        "user_id,item_id,event_type,occurred_at,value\n" + "u1,i1,view,yesterday-ish,\n" * 6
    )
    settings = load_settings(config)
    with pytest.raises(
        ExtractError,
        match=r"2026-01-02\.csv: column interactions\.occurred_at changed type: 6 of 6 value\(s\) are not "
        r"TIMESTAMP \(e\.g\. 'yesterday-ish'\)",
    ):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert raw_count(settings, "interactions") == 0  # the good file of the same source rolled back too


def test_empty_file_and_missing_source_are_clear(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/items/2026-01-02.csv").write_text("")
    settings = load_settings(config)
    with pytest.raises(ExtractError, match=r"items/2026-01-02\.csv: file is empty"):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    (tmp_path / "sources/items/2026-01-02.csv").unlink()
    with pytest.raises(ExtractError, match="source items: no file matches"):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))


def test_extra_column_is_a_warning_not_an_error(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/items/2026-01-02.csv").write_text(
        "item_id,title,category,published_at,colour\ni1,Lamp,home,2025-12-01 00:00:00,red\n"
    )
    settings = load_settings(config)
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["items"].rows_loaded == 1
    assert any("colour" in w for w in loads["items"].warnings)


def test_reads_csv_options_and_s3_sources(tmp_path: Path, s3_server) -> None:
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    body = "u2|i1|click|2026-01-02 09:00:00|\n"
    client.put_object(Bucket=TEST_BUCKET, Key="extract-test/events/2026-01-02.psv", Body=body.encode())
    remote = {
        "interactions": {
            "path": f"s3://{TEST_BUCKET}/extract-test/events/*.psv",
            "format": "csv",
            "csv": {
                "delimiter": "|",
                "header": False,
                "column_names": ["user_id", "item_id", "event_type", "occurred_at", "value"],
            },
        }
    }
    config = make_company(tmp_path, remote)
    settings = load_settings(config, {"storage.endpoint_url": s3_server.endpoint_url})
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["interactions"].rows_loaded == 1
    with connect(settings) as con:
        row = con.execute("select user_id, event_type, _source_file from raw.interactions").fetchall()[0]
    assert row[:2] == ("u2", "click") and row[2].startswith("s3://")


def test_quote_identifier_escapes() -> None:
    from tailor.tasks.extract import quote_identifier

    con = duckdb.connect()
    name = quote_identifier('we"ird')
    con.execute(f"create table t ({name} int)")
    assert con.execute("select column_name from (describe t)").fetchall() == [('we"ird',)]


def test_a_sql_source_derives_what_a_rename_cannot(tmp_path: Path) -> None:
    from tailor.sql import sql_root

    model = sql_root() / "sources" / "test_consents_from_flags.sql"
    model.write_text(
        "-- a consent export with one column per purpose\n"
        "with source as (select * from read_csv($file, all_varchar = true)),\n"
        "final as (\n"
        "    select uid as user_id, 'profiling' as purpose, profiling_flag = 'Y' as is_granted,\n"
        "           changed as updated_at from source\n"
        ")\nselect * from final\n"
    )
    try:
        config = make_company(
            tmp_path, {"consents": {"path": "sources/cmp/*.csv", "sql": "test_consents_from_flags"}}
        )
        cmp = tmp_path / "sources" / "cmp" / "2026-01-02.csv"
        cmp.parent.mkdir(parents=True)
        cmp.write_text("uid,profiling_flag,changed\nu1,Y,2026-01-01 00:00:00\nu2,N,2026-01-01 00:00:00\n")
        settings = load_settings(config)
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
        with connect(settings) as con:
            rows = con.execute(
                "select user_id, purpose, is_granted from raw.consents order by user_id"
            ).fetchall()
        assert rows == [("u1", "profiling", True), ("u2", "profiling", False)]
    finally:
        model.unlink()


def test_parquet_and_json_lines_sources(tmp_path: Path) -> None:
    import polars as pl

    config = make_company(
        tmp_path,
        {
            "items": {"path": "sources/catalogue/*.jsonl"},
            "interactions": {"path": "sources/events/*.parquet", "columns": {"occurred_at": "ts"}},
        },
    )
    catalogue = tmp_path / "sources" / "catalogue" / "2026-01-02.jsonl"
    catalogue.parent.mkdir(parents=True)
    catalogue.write_text(
        '{"item_id": "i1", "title": "Lamp", "category": "home", "published_at": "2025-12-01 00:00:00",'
        ' "price_cents": 1999, "is_available": true}\n'
    )
    events = tmp_path / "sources" / "events" / "2026-01-02.parquet"
    events.parent.mkdir(parents=True)
    pl.DataFrame(
        {"user_id": ["u1"], "item_id": ["i1"], "event_type": ["purchase"], "value": [1999.0]}
    ).with_columns(pl.lit("2026-01-02 08:00:00").str.to_datetime().alias("ts")).write_parquet(events)
    settings = load_settings(config)
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    with connect(settings) as con:
        item = con.execute("select item_id, price_cents, is_available from raw.items").fetchall()
        event = con.execute("select event_type, occurred_at, value from raw.interactions").fetchall()
    assert item == [("i1", 1999, True)]
    assert event[0][0] == "purchase" and str(event[0][1]) == "2026-01-02 08:00:00" and event[0][2] == 1999.0


def test_a_few_unparseable_values_are_kept_with_their_original_text(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/interactions/2026-01-02.csv").write_text(
        "user_id,item_id,event_type,occurred_at,value\n"
        "u1,i1,view,2026-01-02 01:00:00,\nu1,i1,rating,2026-01-02 02:00:00,five\nu1,i1,view,2026-01-02 03:00:00,\n"
    )
    settings = load_settings(config)
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    with connect(settings) as con:
        rows = con.execute(
            "select event_type, value, _invalid_columns, _original_values from raw.interactions order by occurred_at"
        ).fetchall()
    assert [r[2] for r in rows] == [[], ["value"], []]
    assert rows[1][1] is None and '"value":"five"' in rows[1][3]
    assert rows[0][3] is None


def test_yes_no_booleans_parse_with_a_warning(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/consents/2026-01-02.csv").write_text(
        "user_id,purpose,is_granted,updated_at\nu1,profiling,yes,2026-01-01 10:00:00\n"
        "u2,profiling,No,2026-01-01 10:00:00\n"
    )
    settings = load_settings(config)
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    with connect(settings) as con:
        granted = con.execute("select user_id, is_granted from raw.consents order by user_id").fetchall()
    assert granted == [("u1", True), ("u2", False)]
    assert any("2 value(s) spelled yes/no" in w and "is_granted" in w for w in loads["consents"].warnings)


def test_reader_errors_are_translated(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    events = tmp_path / "sources/interactions/2026-01-02.csv"
    settings = load_settings(config)
    ctx = run_context(settings, date(2026, 1, 3))
    events.write_bytes(b"user_id,item_id,event_type,occurred_at,value\nu1,i1,vi\xe9w,2026-01-02 01:00:00,\n")
    with pytest.raises(ExtractError, match="not valid utf-8 text"):
        extract_sources.fn(settings, ctx)
    events.write_text("user_id;item_id;event_type;occurred_at;value\nu1;i1;view;2026-01-02 01:00:00;\n")
    with pytest.raises(ExtractError, match="looks delimited by ';'"):
        extract_sources.fn(settings, ctx)
    events.write_text(interactions("2026-01-02", 3) + "u1,i1,vi")
    with pytest.raises(
        ExtractError, match=r"line \d+ has \d field\(s\), expected 5 \(truncated or malformed file\)"
    ):
        extract_sources.fn(settings, ctx)


def test_a_failing_source_unloads_the_whole_run(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/interactions/2026-01-02.csv").write_text("")  # the last source configured fails
    settings = load_settings(config)
    with pytest.raises(ExtractError):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert raw_count(settings, "users") == 0  # loaded before the failure, then forgotten
    with connect(settings) as con:
        assert con.execute("select count(*) from meta.loaded_files").fetchall()[0][0] == 0


def test_a_replaced_snapshot_is_loaded_again(tmp_path: Path) -> None:
    import os

    config = make_company(tmp_path, {"items": {"path": "sources/catalogue.csv"}})
    snapshot = tmp_path / "sources" / "catalogue.csv"
    snapshot.write_text(ITEMS)
    settings = load_settings(config)
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    snapshot.write_text(ITEMS + "i2,Desk,home,2025-12-02 00:00:00\n")
    os.utime(snapshot, ns=(snapshot.stat().st_atime_ns, snapshot.stat().st_mtime_ns + 10**9))
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert loads["items"].files_loaded == 1
    with connect(settings) as con:
        items = con.execute("select item_id from raw.items order by item_id").fetchall()
    assert items == [("i1",), ("i2",)]
    assert extract_sources.fn(settings, run_context(settings, date(2026, 1, 5)))["items"].files_loaded == 0


def test_zone_aware_timestamps_land_in_utc_whatever_the_host_zone(tmp_path: Path, monkeypatch) -> None:
    import time

    import polars as pl

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        config = make_company(tmp_path, {"interactions": {"path": "sources/events/*.parquet"}})
        events = tmp_path / "sources" / "events" / "2026-01-02.parquet"
        events.parent.mkdir(parents=True)
        pl.DataFrame(
            {"user_id": ["u1"], "item_id": ["i1"], "event_type": ["view"], "value": [None]}
        ).with_columns(
            pl.lit("2026-01-02 08:00:00").str.to_datetime().dt.replace_time_zone("UTC").alias("occurred_at")
        ).write_parquet(events)
        settings = load_settings(config)
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
        with connect(settings) as con:
            stamp = con.execute("select occurred_at from raw.interactions").fetchall()[0][0]
        assert str(stamp) == "2026-01-02 08:00:00"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_offsets_are_honoured_and_fractions_never_round_into_integers(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    (tmp_path / "sources/items/2026-01-02.csv").write_text(
        "item_id,title,category,published_at,price_cents\n"
        "i1,Lamp,home,2025-12-01T10:00:00+02:00,1999\n"
        "i2,Desk,home,2025-12-01 10:00:00,19.99\n"
        "i3,Sofa,home,2025-12-01 10:00:00,2500.0\n"
    )
    settings = load_settings(config)
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    with connect(settings) as con:
        rows = con.execute(
            "select item_id, published_at, price_cents, _invalid_columns from raw.items order by item_id"
        ).fetchall()
    assert str(rows[0][1]) == "2025-12-01 08:00:00" and rows[0][2] == 1999
    assert rows[1][2] is None and rows[1][3] == ["price_cents"]
    assert rows[2][2] == 2500 and rows[2][3] == []


def test_drift_counts_only_rows_that_have_a_value(tmp_path: Path) -> None:
    config = make_company(tmp_path)
    views = [f"u1,i1,view,2026-01-02 {h:02d}:00:00," for h in range(20)]
    ratings = [f"u1,i1,rating,2026-01-02 {h:02d}:30:00,four" for h in range(6)]  # value mostly empty
    (tmp_path / "sources/interactions/2026-01-02.csv").write_text(
        "user_id,item_id,event_type,occurred_at,value\n" + "\n".join(views + ratings) + "\n"
    )
    settings = load_settings(config)
    with pytest.raises(
        ExtractError, match=r"interactions\.value changed type: 6 of 6 value\(s\) are not DOUBLE"
    ):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))


# A company's own SQL beside its config: order lines are the driving files; the orders they belong to
# (customer, time) are an input the SQL joins in.
ORDER_LINES_SQL = """-- one interaction per order line; the order says who and when
with lines as (
    select * from read_csv($file, all_varchar = true)
),

orders as (
    select * from read_csv($orders, all_varchar = true)
),

final as (
    select
        orders.customer as user_id,
        lines.sku as item_id,
        'purchase' as event_type,
        orders.ordered_at as occurred_at,
        lines.amount as value
    from lines
    inner join orders using (order_id)
)

select * from final
-- a trailing comment must not swallow the closing parenthesis extract wraps the SQL in
"""


def order_company(root: Path, orders_path: str = "exports/orders/*.csv") -> Path:
    config = make_company(
        root,
        {
            "interactions": {
                "path": "exports/lines/*.csv",
                "sql": "sql/interactions.sql",
                "inputs": {"orders": orders_path},
            }
        },
    )
    (root / "sql").mkdir(exist_ok=True)
    (root / "sql" / "interactions.sql").write_text(ORDER_LINES_SQL)
    files = {
        "exports/lines/2026-01-01.csv": "order_id,sku,amount\no1,i1,1200\no1,i2,300\n",
        "exports/lines/2026-01-02.csv": "order_id,sku,amount\no2,i1,1200\n",
        "exports/orders/2026-01-01.csv": "order_id,customer,ordered_at\no1,u1,2026-01-01 09:00:00\n",
        "exports/orders/2026-01-02.csv": "order_id,customer,ordered_at\no2,u2,2026-01-02 18:30:00\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return config


def purchases(settings) -> list[tuple]:
    with connect(settings) as con:
        return con.execute(
            "select user_id, item_id, cast(occurred_at as varchar), value, _source_file from raw.interactions "
            "order by occurred_at, item_id"
        ).fetchall()


def test_a_company_sql_file_beside_the_config_joins_named_inputs(tmp_path: Path) -> None:
    settings = load_settings(order_company(tmp_path))
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["interactions"].files_loaded == 2 and loads["interactions"].rows_loaded == 3
    assert purchases(settings) == [
        ("u1", "i1", "2026-01-01 09:00:00", 1200.0, "exports/lines/2026-01-01.csv"),
        ("u1", "i2", "2026-01-01 09:00:00", 300.0, "exports/lines/2026-01-01.csv"),
        ("u2", "i1", "2026-01-02 18:30:00", 1200.0, "exports/lines/2026-01-02.csv"),
    ]
    # the config's folder, not the working directory, anchors the SQL path
    assert settings.source_sql_path("interactions") == tmp_path / "sql" / "interactions.sql"


def test_inputs_see_only_files_dated_before_the_run(tmp_path: Path) -> None:
    settings = load_settings(order_company(tmp_path))
    (tmp_path / "exports/lines/2026-01-03.csv").write_text("order_id,sku,amount\no3,i2,300\n")
    (tmp_path / "exports/orders/2026-01-03.csv").write_text("order_id,customer,ordered_at\no3,u3,2026-01-03 09:00:00\n")
    # the run of 01-03 sees neither the lines nor the orders of 01-03
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["interactions"].rows_loaded == 3
    assert {row[0] for row in purchases(settings)} == {"u1", "u2"}
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert {row[0] for row in purchases(settings)} == {"u1", "u2", "u3"}


def test_a_changed_input_reloads_every_driving_file(tmp_path: Path) -> None:
    import os

    settings = load_settings(order_company(tmp_path))
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    # order o1 was reassigned to another customer: the lines loaded with the old order are stale
    orders = tmp_path / "exports/orders/2026-01-01.csv"
    orders.write_text("order_id,customer,ordered_at\no1,u9,2026-01-01 10:00:00\n")
    os.utime(orders, ns=(orders.stat().st_atime_ns, orders.stat().st_mtime_ns + 10**9))
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert loads["interactions"].files_loaded == 2  # both driving files, although neither changed
    rows = purchases(settings)
    assert len(rows) == 3  # replaced, not loaded twice
    assert [row[:3] for row in rows[:2]] == [
        ("u9", "i1", "2026-01-01 10:00:00"),
        ("u9", "i2", "2026-01-01 10:00:00"),
    ]
    # nothing changed since: nothing is loaded again
    assert extract_sources.fn(settings, run_context(settings, date(2026, 1, 5)))["interactions"].files_loaded == 0
    with connect(settings) as con:
        fingerprints = con.execute(
            "select fingerprint from meta.loaded_files where source = 'interactions'"
        ).fetchall()
    assert all("|inputs:" in row[0] for row in fingerprints)


def test_a_new_input_file_reloads_and_a_source_without_inputs_keeps_its_plain_fingerprint(
    tmp_path: Path,
) -> None:
    settings = load_settings(order_company(tmp_path))
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    (tmp_path / "exports/orders/2026-01-03.csv").write_text("order_id,customer,ordered_at\no3,u1,2026-01-03 08:00:00\n")
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert loads["interactions"].files_loaded == 2
    assert loads["users"].files_loaded == 0
    with connect(settings) as con:
        plain = con.execute("select fingerprint from meta.loaded_files where source = 'users'").fetchall()
    assert plain and "|inputs:" not in plain[0][0]


def test_an_input_matching_no_file_names_the_source_the_input_and_the_pattern(tmp_path: Path) -> None:
    settings = load_settings(order_company(tmp_path, orders_path="exports/orderz/*.csv"))
    with pytest.raises(ExtractError) as error:
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    message = str(error.value)
    assert "source interactions" in message and "input orders" in message
    assert str(tmp_path / "exports/orderz/*.csv") in message
    assert raw_count(settings, "users") == 0  # the run unloads what it had loaded


def test_inputs_on_s3_are_listed_and_fetched(tmp_path: Path, s3_server) -> None:
    client = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    client.put_object(
        Bucket=TEST_BUCKET,
        Key="extract-inputs/orders/2026-01-01.csv",
        Body=b"order_id,customer,ordered_at\no1,u1,2026-01-01 09:00:00\no2,u2,2026-01-01 10:00:00\n",
    )
    config = order_company(tmp_path, orders_path=f"s3://{TEST_BUCKET}/extract-inputs/orders/*.csv")
    (tmp_path / "exports/lines/2026-01-02.csv").unlink()
    settings = load_settings(config, {"storage.endpoint_url": s3_server.endpoint_url})
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["interactions"].rows_loaded == 2
    assert {row[0] for row in purchases(settings)} == {"u1"}


def test_company_sql_is_read_afresh_on_every_run(tmp_path: Path) -> None:
    settings = load_settings(order_company(tmp_path))
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    sql = tmp_path / "sql" / "interactions.sql"
    sql.write_text(ORDER_LINES_SQL.replace("'purchase' as event_type", "'add_to_cart' as event_type"))
    (tmp_path / "exports/lines/2026-01-03.csv").write_text("order_id,sku,amount\no1,i3,50\n")
    extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    with connect(settings) as con:
        types = con.execute(
            "select item_id, event_type from raw.interactions where item_id = 'i3'"
        ).fetchall()
    assert types == [("i3", "add_to_cart")]


def test_a_failing_company_sql_names_the_sql_and_the_file(tmp_path: Path) -> None:
    config = order_company(tmp_path)
    (tmp_path / "sql" / "interactions.sql").write_text(ORDER_LINES_SQL.replace("lines.sku", "lines.skew"))
    settings = load_settings(config)
    with pytest.raises(ExtractError, match=r"lines/2026-01-01\.csv: its SQL \(sql/interactions\.sql\) fails"):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))


def test_an_input_the_sql_never_reads_is_a_warning(tmp_path: Path) -> None:
    config = order_company(tmp_path)
    data = yaml.safe_load(config.read_text())
    data["sources"]["interactions"]["inputs"]["returns"] = "exports/orders/*.csv"
    config.write_text(yaml.safe_dump(data))
    settings = load_settings(config)
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert any("input returns is not read by its SQL" in w for w in loads["interactions"].warnings)


def test_a_warehouse_from_before_the_retail_columns_gains_them(tmp_path) -> None:
    import duckdb

    from tailor.tasks.extract import ensure_meta

    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("create schema raw")
    # raw.interactions as an earlier version created it: no order, quantity, price or channel
    con.execute(
        "create table raw.interactions (user_id varchar, item_id varchar, event_type varchar, "
        "occurred_at timestamp, value double)"
    )
    ensure_meta(con)
    columns = {row[0] for row in con.execute("describe raw.interactions").fetchall()}
    assert {"order_id", "quantity", "unit_price_cents", "channel", "_row_key"} <= columns


def test_any_failure_before_the_gates_pass_puts_back_what_the_loads_replaced(tmp_path: Path) -> None:
    import os

    from tailor.tasks.extract import gated_loads

    config = make_company(tmp_path, {"items": {"path": "sources/catalogue.csv"}})
    snapshot = tmp_path / "sources" / "catalogue.csv"
    snapshot.write_text(ITEMS + "i2,Desk,home,2025-12-02 00:00:00\n")
    settings = load_settings(config)

    def state() -> tuple:
        with connect(settings) as con:
            items = con.execute("select item_id, _row_key, _loaded_run_date from raw.items order by 1").fetchall()
            files = con.execute("select * from meta.loaded_files order by source, file_uri").fetchall()
        return items, files

    with gated_loads(settings, run_context(settings, date(2026, 1, 3))):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    before = state()
    snapshot.write_text(ITEMS)  # re-delivered in place with one row fewer
    os.utime(snapshot, ns=(snapshot.stat().st_atime_ns, snapshot.stat().st_mtime_ns + 10**9))
    for day in (date(2026, 1, 3), date(2026, 1, 4)):  # a rerun of the night, and the next night
        ctx = run_context(settings, day)
        with pytest.raises(RuntimeError, match="a task between extract and the gate"), gated_loads(settings, ctx):
            extract_sources.fn(settings, ctx)
            assert raw_count(settings, "items") == 1
            raise RuntimeError("a task between extract and the gate failed")
        assert state() == before
    with connect(settings) as con:
        assert con.execute("select count(*) from recovery.pending").fetchall()[0][0] == 0
    # past the block the loads are kept, and the rows they replaced are gone for good
    with gated_loads(settings, run_context(settings, date(2026, 1, 4))):
        extract_sources.fn(settings, run_context(settings, date(2026, 1, 4)))
    assert raw_count(settings, "items") == 1
    with connect(settings) as con:
        assert con.execute(
            "select count(*) from information_schema.tables where table_schema = 'recovery'"
        ).fetchall()[0][0] == 1  # only the (empty) list of pending runs


def test_an_erasure_during_a_rejected_run_reaches_the_rows_it_puts_back(tmp_path: Path) -> None:
    import os

    from tailor.tasks.extract import gated_loads
    from tailor.tasks.privacy import erase_deleted_users

    config = make_company(
        tmp_path,
        {
            "users": {"path": "sources/people.csv", "columns": {"user_id": "uid", "created_at": "signed_up"}},
            "deletion_requests": {"path": "sources/deletion_requests/*.csv"},
        },
    )
    people = tmp_path / "sources" / "people.csv"
    people.write_text(USERS)
    settings = load_settings(config)
    first = run_context(settings, date(2026, 1, 3))
    with gated_loads(settings, first):
        extract_sources.fn(settings, first)
    # the snapshot comes again without u1, and u2 asks to be erased; then the run fails before its gates
    people.write_text("uid,signed_up,country\nu2,2026-01-02 11:00:00,FR\n")
    os.utime(people, ns=(people.stat().st_atime_ns, people.stat().st_mtime_ns + 10**9))
    requests = tmp_path / "sources" / "deletion_requests" / "2026-01-03.csv"
    requests.parent.mkdir()
    requests.write_text("user_id,requested_at\nu2,2026-01-03 08:00:00\n")
    ctx = run_context(settings, date(2026, 1, 4))
    with pytest.raises(RuntimeError, match="gate"), gated_loads(settings, ctx):
        extract_sources.fn(settings, ctx)
        assert erase_deleted_users.fn(settings, ctx)["new_requests"] == 1
        raise RuntimeError("the gate failed")
    with connect(settings) as con:
        users = con.execute("select user_id from raw.users order by 1").fetchall()
        registered = con.execute("select count(*) from meta.deletion_register").fetchall()[0][0]
    assert users == [("u1",)]  # u1's old row is back; u2's is not, though it was there before the run
    assert registered == 1  # an erasure is never rolled back


def test_exposures_carry_a_slot_and_the_logging_propensity(tmp_path: Path) -> None:
    exposures = tmp_path / "sources/exposures/2026-01-02.csv"
    exposures.parent.mkdir(parents=True)
    exposures.write_text(
        "campaign_id,variant_id,user_id,sent_at,slot,propensity\n"
        "c1,a,u1,2026-01-01 09:00:00,1,0.45\nc1,holdout,u2,2026-01-01 09:00:00,,0.1\n"
    )
    source = {"path": "sources/exposures/*.csv", "columns": {"position": "slot"}}
    settings = load_settings(make_company(tmp_path, {"campaign_exposures": source}))
    loads = extract_sources.fn(settings, run_context(settings, date(2026, 1, 3)))
    assert loads["campaign_exposures"].rows_loaded == 2
    assert not any("propensity" in w or "slot" in w for w in loads["campaign_exposures"].warnings)
    with connect(settings) as con:
        rows = con.execute(
            "select variant_id, position, propensity from raw.campaign_exposures order by variant_id"
        ).fetchall()
    assert rows == [("a", 1, 0.45), ("holdout", None, 0.1)]
