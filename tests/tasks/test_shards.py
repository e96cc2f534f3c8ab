from __future__ import annotations

import hashlib

import duckdb
import polars as pl
import pyarrow as pa

from tailor.config import ComputeConfig
from tailor.tasks.shards import ShardWriter, make_shards, shard_of


def test_a_users_shard_is_the_md5_of_the_id_modulo_the_count_in_python_and_in_duckdb() -> None:
    ids = ["u1", "u2", "user-000123", "ü"]
    expected = [int.from_bytes(hashlib.md5(u.encode()).digest(), "little") % 7 for u in ids]
    assert shard_of(ids, 7).tolist() == expected
    assert shard_of(ids, 1).tolist() == [0, 0, 0, 0]
    in_sql = duckdb.connect().execute(
        "select md5_number(id) % cast($n as ubigint) from unnest($ids) with ordinality as t(id, i) order by i",
        {"ids": ids, "n": 7},
    ).fetchall()
    assert [int(row[0]) for row in in_sql] == expected


def test_the_writer_puts_every_row_in_its_users_shard_once_and_gives_every_shard_a_file(tmp_path) -> None:
    frame = pl.DataFrame({"user_id": [f"u{i // 3}" for i in range(60)], "value": list(range(60))})
    shards = make_shards(tmp_path, 4)
    schema = pa.schema([("user_id", pa.string()), ("value", pa.int64())])
    with ShardWriter(shards, "part", schema) as writer:
        writer.write(frame.head(25))
        writer.write(frame.tail(35))
        writer.write(frame.head(0))
    parts = [pl.read_parquet(shard.path("part")) for shard in shards]
    assert sum(part.height for part in parts) == 60
    assert pl.concat(parts).sort("value").equals(frame)
    for shard, part in zip(shards, parts, strict=True):
        assert set(shard_of(part["user_id"].to_list(), 4).tolist()) <= {shard.index}
        # a user's rows keep their order within the shard
        assert part["value"].to_list() == sorted(part["value"].to_list())
    empty = make_shards(tmp_path / "empty", 3)
    ShardWriter(empty, "part", schema).close()
    assert all(pl.read_parquet(shard.path("part")).schema == {"user_id": pl.Utf8, "value": pl.Int64}
               for shard in empty)  # fmt: skip


def test_shard_count_follows_users_unless_fixed() -> None:
    assert ComputeConfig().shard_count(1) == 1
    assert ComputeConfig(users_per_shard=1000).shard_count(2001) == 3
    assert ComputeConfig(shards=5).shard_count(10) == 5
