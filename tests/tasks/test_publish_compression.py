"""`publish.compression: gzip`: CSV and JSON lines as .csv.gz/.jsonl.gz, the same rows, the same bytes on a rerun."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa

from tailor.tasks.publish import write_parts


def test_gzip_parts_decompress_to_the_same_rows_and_rerun_byte_identical(tmp_path: Path) -> None:
    table = pa.table(
        {"user_id": ["a", "b", "c"], "score": [0.3, 0.2, 0.1], "items": [["i1"], [], ["i2", "i3"]]}
    )
    plain = write_parts(table, tmp_path / "plain", "recs", 2, ["parquet", "csv", "jsonl"])
    packed = write_parts(table, tmp_path / "gz", "recs", 2, ["parquet", "csv", "jsonl"], "gzip")
    again = write_parts(table, tmp_path / "again", "recs", 2, ["parquet", "csv", "jsonl"], "gzip")
    assert [f["path"] for f in packed] == [
        "recs/part-0000.parquet", "recs/part-0000.csv.gz", "recs/part-0000.jsonl.gz",
        "recs/part-0001.parquet", "recs/part-0001.csv.gz", "recs/part-0001.jsonl.gz",
    ]  # fmt: skip
    assert [f.get("compression") for f in packed] == [None, "gzip", "gzip"] * 2
    assert [f.get("compression") for f in plain] == [None, "none", "none"] * 2
    # a rerun gives the same bytes (no name, no time in the gzip header), and the checksum is of those bytes
    assert [f["sha256"] for f in packed] == [f["sha256"] for f in again]
    for file in packed:
        body = (tmp_path / "gz" / file["path"]).read_bytes()
        assert hashlib.sha256(body).hexdigest() == file["sha256"] and len(body) == file["bytes"]
    for mine, theirs in zip(plain, packed, strict=True):
        body = (tmp_path / "gz" / theirs["path"]).read_bytes()
        if theirs["format"] != "parquet":
            body = gzip.decompress(body)
        assert body == (tmp_path / "plain" / mine["path"]).read_bytes()
    text = gzip.decompress((tmp_path / "gz" / "recs" / "part-0000.jsonl.gz").read_bytes()).decode()
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows == [
        {"user_id": "a", "score": 0.3, "items": ["i1"]},
        {"user_id": "b", "score": 0.2, "items": []},
    ]
    assert pl.read_csv(tmp_path / "gz" / "recs" / "part-0001.csv.gz")["user_id"].to_list() == ["c"]
