from __future__ import annotations

import re

import duckdb
import pytest

from tailor import sql


def test_bind_keeps_only_named_parameters_and_requires_them() -> None:
    text = "select $a as x -- a comment naming $ghost\n, $b as y"
    assert sql.bind(text, {"a": 1, "b": 2, "unused": 3}) == {"a": 1, "b": 2}
    with pytest.raises(KeyError, match="b"):
        sql.bind(text, {"a": 1})


def test_table_name_comes_from_a_plain_path() -> None:
    assert sql.table_name("staging/stg_users") == "staging.stg_users"
    with pytest.raises(ValueError):
        sql.table_name("staging/stg_users; drop table x")


def test_every_model_file_reads_and_names_a_table() -> None:
    models = sorted(p for p in sql.sql_root().rglob("*.sql"))
    assert len(models) >= 15
    for path in models:
        model = str(path.relative_to(sql.sql_root()).with_suffix(""))
        text = sql.read_sql(model)
        assert "final" in text, f"{model} is not a chain of CTEs ending in final"
        assert not re.search(r"\{[a-z_]*\}", text), f"{model} looks like it expects string formatting"


def test_materialize_partition_replaces_rather_than_appends(monkeypatch) -> None:
    con = duckdb.connect()
    con.execute("create schema staging")
    con.execute("create table staging.stg_interactions as select 'u1' as user_id, 'i1' as item_id")
    monkeypatch.setattr(
        sql, "read_sql", lambda model: "select $cutoff as cutoff, user_id from staging.stg_interactions"
    )
    for _ in range(2):
        assert sql.materialize_partition(con, "features/demo", "cutoff", {"cutoff": 1}) == 1
    sql.materialize_partition(con, "features/demo", "cutoff", {"cutoff": 2})
    assert sql.count_rows(con, "features.demo") == 2


def test_a_model_taking_bucket_runs_once_per_bucket_and_one_taking_only_buckets_once(monkeypatch) -> None:
    con = duckdb.connect()
    con.execute("create schema staging")
    con.execute("create table staging.stg_interactions as select 'u' || i as user_id, i from range(12) t(i)")
    models = {
        "features/per_bucket": "select $cutoff as cutoff, $bucket as bucket, user_id "
        "from staging.stg_interactions where i % $buckets = $bucket",
        "features/all_buckets": "select $cutoff as cutoff, i % $buckets as bucket, user_id "
        "from staging.stg_interactions",
    }
    monkeypatch.setattr(sql, "read_sql", lambda model: models[model])
    for model in models:
        assert sql.materialize_partition(con, model, "cutoff", {"cutoff": 1}, buckets=4) == 12, model
    # each user once, in the same bucket, whether built a bucket at a time or in one statement
    assert (
        con.execute(
            "select user_id, bucket from features.per_bucket except select user_id, bucket from features.all_buckets"
        ).fetchall()
        == []
    )
    assert con.execute("select count(distinct bucket) from features.per_bucket").fetchall() == [(4,)]


def test_parameters_in_comments_and_string_literals_are_not_parameters() -> None:
    text = "select $a, '$USD' -- the customer's $b\nfrom t where x = $c and y = 'it''s $d' -- $e\n"
    assert sql.parameter_names(text) == {"a", "c"}
    assert sql.bind(text, {"a": 1, "c": 2}) == {"a": 1, "c": 2}
