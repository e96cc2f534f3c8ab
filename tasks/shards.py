"""User shards: the unit of work for scoring and rendering.

A user's shard is a hash of the user id (MD5, so it is the same on every machine and every night) modulo
the shard count. A stage writes its inputs once, one Parquet folder per shard, under the run folder; each
shard is then a Prefect task that reads only its own files, so memory holds one shard, and the tasks can
run in this process or on a Dask cluster that sees the same folder.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tailor.config import Settings


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    folder: str  # this shard's inputs and outputs (a string: flow parameters must be plain)

    def path(self, name: str) -> Path:
        return Path(self.folder) / f"{name}.parquet"

    def partition(self, name: str) -> Path:
        """This shard's folder of a Hive-partitioned export (`export_shards`)."""
        return Path(self.folder).parent / name / f"shard={self.index}"

    def read(self, name: str) -> pl.DataFrame:
        return pl.read_parquet(self.partition(name) / "*.parquet", hive_partitioning=False)


def shard_of(user_ids: Iterable[str], count: int, memo: dict[str, int] | None = None) -> np.ndarray:
    """Each user's shard, 0..count-1."""
    memo = {} if memo is None else memo
    out = []
    for user_id in user_ids:
        shard = memo.get(user_id)
        if shard is None:
            digest = hashlib.md5(user_id.encode(), usedforsecurity=False).digest()
            # DuckDB's md5_number reads the digest as a little-endian 128-bit number: the same shard in SQL
            shard = memo[user_id] = int.from_bytes(digest, "little") % count
        out.append(shard)
    return np.asarray(out, dtype=np.int64)


def make_shards(folder: Path, count: int) -> list[Shard]:
    shards = [Shard(index, count, str(folder / f"shard-{index:04d}")) for index in range(count)]
    for shard in shards:
        Path(shard.folder).mkdir(parents=True, exist_ok=True)
    return shards


class ShardWriter:
    """Streams frames into one Parquet file per shard; every shard gets a file, empty if need be."""

    def __init__(self, shards: list[Shard], name: str, schema: pa.Schema) -> None:
        self.shards, self.name, self.schema = shards, name, schema
        self.writers: dict[int, pq.ParquetWriter] = {}
        self.memo: dict[str, int] = {}

    def write(self, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        ids = shard_of(frame["user_id"].to_list(), len(self.shards), self.memo)
        keyed = frame.with_columns(pl.Series("__shard", ids))
        for (index,), part in keyed.partition_by("__shard", as_dict=True, maintain_order=True).items():
            writer = self.writers.get(int(index))
            if writer is None:
                writer = self.writers[int(index)] = pq.ParquetWriter(
                    self.shards[int(index)].path(self.name), self.schema
                )
            writer.write_table(part.drop("__shard").to_arrow().cast(self.schema))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        for shard in self.shards:
            if shard.index not in self.writers:
                pq.write_table(self.schema.empty_table(), shard.path(self.name))

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


SHARD_EXPORT = (
    "copy (select *, md5_number(user_id) % cast($shards as ubigint) as shard from {table} "
    "where cutoff = $cutoff) to $folder (format parquet, partition_by (shard))"
)


def export_shards(
    con: duckdb.DuckDBPyConnection, table: str, cutoff: Any, shards: list[Shard], name: str
) -> None:
    """One cutoff's rows of a feature table, split into the shards' folders by DuckDB in one parallel pass
    (the shard: MD5 of the user id modulo the count). A shard without rows gets an empty file."""
    folder = Path(shards[0].folder).parent / name
    # the table name comes from code; the values are bound
    con.execute(
        SHARD_EXPORT.format(table=table), {"shards": len(shards), "cutoff": cutoff, "folder": str(folder)}
    )
    empty = con.sql(f"select * from {table} limit 0").to_arrow_table()
    for shard in shards:
        if not shard.partition(name).exists():
            shard.partition(name).mkdir(parents=True)
            pq.write_table(empty, shard.partition(name) / "empty.parquet")


def task_runner(settings: Settings) -> TaskRunner:
    """The configured runner for shard tasks."""
    compute = settings.compute
    if compute.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if compute.dask_address:
            return DaskTaskRunner(address=compute.dask_address)
        # one thread per worker: LightGBM and DuckDB already use every core they are given
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": compute.dask_workers,
                "threads_per_worker": 1,
                "host": "127.0.0.1",
                "dashboard_address": None,
            }
        )
    return ThreadPoolTaskRunner(max_workers=compute.local_workers)
