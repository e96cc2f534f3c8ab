"""Publish: write each dataset as Parquet (and CSV where a campaign system needs it), describe the run in
`manifest.json`, upload everything into a new attempt folder, and only then point `latest.json` at it.

Layout, identical for `file://` and `s3://` targets:
    PREFIX/runs/RUN_DATE/ATTEMPT/<dataset>/part-0000.parquet
    PREFIX/runs/RUN_DATE/ATTEMPT/manifest.json     (file paths relative to the attempt folder)
    PREFIX/runs/RUN_DATE/latest.json               that date's current attempt
    PREFIX/latest.json                             the newest date's current attempt
    PREFIX/tables/<dataset>/                       the BI tables (Delta Lake; tasks/tables.py), before the pointers
A pointer is {"run_date", "attempt", "folder": "runs/RUN_DATE/ATTEMPT", "manifest":
"runs/RUN_DATE/ATTEMPT/manifest.json", "published_at"}. ATTEMPT is the UTC publish time and a random suffix
(`20261201T023512Z-3f9a1c`): every publish writes a folder of its own and never touches a published one, so
a republish killed mid-upload leaves the pointers on a complete attempt. The attempt is named only in the
pointers, so a rerun on the same inputs gives byte-identical files and manifest. An attempt a republish
replaced stays `publish.keep_superseded_attempts_hours` (for readers that followed the old pointer), then a
later publish removes it; no attempt a pointer names is ever removed. The experiments flow run on its own
publishes the same way under `PREFIX/experiments/`, with its own pointers.

Before anything is written, a last consent check runs on the exact rows to be published,
independently of the filters upstream: a row for a user without the consent it needs fails the run.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import logging
import math
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version
from pathlib import Path, PurePosixPath
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import CHANNEL_CONSENT, Settings
from tailor.progress import reported
from tailor.sql import materialize, query
from tailor.storage import ObjectStore, StorageError, check_target, is_connection_error, open_store
from tailor.tasks.braze import (
    BRAZE_DATASETS,
    braze_id_kind,
    braze_manifest,
    build_braze_feeds,
    check_feed_current,
    record_published,
    upload_braze_files,
)
from tailor.tasks.experiments import ensure_tables
from tailor.tasks.fairness import ensure_audit_table
from tailor.tasks.personalize import LINE_SHAPES
from tailor.tasks.report import REPORT_FILE, published_report
from tailor.tasks.train import served_by_label
from tailor.tasks.validate import Check, QualityReport, combine, store_results
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2
UPLOAD_THREADS = 4
PSEUDONYM_HEX_CHARS = 32  # 128 bits of HMAC-SHA256


class ConsentViolation(RuntimeError):
    """Rows were about to be published for users without the consent they need."""


ConsentRule = Callable[[pl.DataFrame, Settings], list[pl.DataFrame]]


def channel_purposes(frame: pl.DataFrame) -> pl.DataFrame:
    """(user_id, purpose) for every channel listed in a row's comma-separated `channels`."""
    return (
        frame.select("user_id", pl.col("channels").fill_null("").str.split(",").alias("channel"))
        .explode("channel")
        .filter(pl.col("channel") != "")
        .select(
            "user_id",
            pl.col("channel").replace_strict(CHANNEL_CONSENT, default="unknown-channel").alias("purpose"),
        )
    )


def profiling_where(frame: pl.DataFrame, condition: pl.Expr, purpose: str = "profiling") -> pl.DataFrame:
    return frame.filter(condition).select("user_id", pl.lit(purpose).alias("purpose"))


# What each dataset's rows need, derived from what each row holds: the purposes a dataset declares.


def channels_and_personalization(frame: pl.DataFrame, settings: Settings) -> list[pl.DataFrame]:
    """Every channel the row lists, and profiling when the row is personalized."""
    profiling = settings.recommendations.requires_consent
    return [channel_purposes(frame), profiling_where(frame, pl.col("is_personalized"), profiling)]


def campaign_purposes(frame: pl.DataFrame, settings: Settings) -> list[pl.DataFrame]:
    """The campaign's purposes (its channel's marketing consent and its audience's), and profiling when
    the variant was chosen for the user."""
    purposes = {c.campaign_id: c.required_consents for c in settings.campaigns}
    return [
        frame.select(
            "user_id",
            pl.col("campaign_id")
            .replace_strict(purposes, default=["unknown-campaign"], return_dtype=pl.List(pl.Utf8))
            .alias("purpose"),
        ).explode("purpose"),
        profiling_where(frame, pl.col("is_personalized")),
    ]


def user_feed_purposes(frame: pl.DataFrame, settings: Settings) -> list[pl.DataFrame]:
    """Every channel and campaign purpose in the payload, and profiling when it holds a profile."""
    campaign_purposes = (
        frame.select("user_id", pl.col("campaign_purposes").str.split(",").alias("purpose"))
        .explode("purpose")
        .filter(pl.col("purpose") != "")
    )
    return [channel_purposes(frame), campaign_purposes, profiling_where(frame, pl.col("needs_profiling"))]


def profiling(frame: pl.DataFrame, settings: Settings) -> list[pl.DataFrame]:
    """Every row profiles its user."""
    return [profiling_where(frame, pl.lit(True))]


def listed_users_profiling(frame: pl.DataFrame, settings: Settings) -> list[pl.DataFrame]:
    """Every user an audience lists is there for their profile."""
    users = frame.select(pl.col("recommended_users").explode().alias("user_id")).drop_nulls()
    return [profiling_where(users, pl.lit(True))]


def no_user(frame: pl.DataFrame, settings: Settings) -> list[pl.DataFrame]:
    """Aggregates: no row is about a user."""
    return []


@dataclass(frozen=True)
class Dataset:
    name: str
    table: str
    order_by: str
    model: str | None  # the model whose version produced it
    description: str
    consent: ConsentRule  # the purposes its rows need (checked before anything is written)
    this_run_only: bool = False  # the table keeps history; publish only the run's rows
    history: bool = False  # the table keeps history; publish every run's rows up to this one
    drop_columns: tuple[str, ...] = ()  # needed for the consent check, but must not leave the warehouse
    rename: tuple[tuple[str, str], ...] = ()  # published names where a consumer fixes them
    user_lists: tuple[str, ...] = ()  # list columns of user ids: consent-checked and pseudonymised id by id


DATASETS = (
    Dataset(
        "recommendations",
        "marts.recommendations",
        "user_id, rank",
        "ranking",
        "Top-K items per reachable user, with score, rank, a readable reason and whether it is personalized.",
        consent=channels_and_personalization,
    ),
    Dataset(
        "user_scores",
        "marts.user_scores",
        "user_id",
        "propensity",
        "Probability of a purchase within the horizon, and its decile, per user who allows profiling.",
        consent=profiling,
    ),
    Dataset(
        "segments",
        "marts.segments",
        "user_id",
        None,
        "RFM segment and behavioural cluster per user who allows profiling.",
        consent=profiling,
    ),
    Dataset(
        "segment_profiles",
        "marts.segment_profiles",
        "segment_type, segment_id",
        None,
        "Every RFM segment and cluster: size, share and a description in words.",
        consent=no_user,
    ),
    Dataset(
        "item_audiences",
        "marts.item_audiences",
        "audience_type, audience_id, rank",
        "engagement",
        "For each configured item and category, the users most likely to engage, with scores.",
        consent=profiling,
    ),
    Dataset(
        "content",
        "marts.content",
        "campaign_id, user_id",
        None,
        "Per user and active campaign: variant or holdout, allocation policy and reason, rendered copy.",
        consent=campaign_purposes,
    ),
    Dataset(
        "personalize_batch",
        "marts.personalize_batch",
        "user_id",
        "ranking",
        "Recommendations in Amazon Personalize's batch output shape (JSON lines: input.userId, output).",
        consent=channels_and_personalization,
    ),
    Dataset(
        "personalize_segments",
        "marts.personalize_segments",
        "audience_type, audience_id",
        "engagement",
        "Item audiences in Amazon Personalize's batch segment output shape (JSON lines: input.itemId or "
        "itemAttributes, output.recommendedUsers).",
        consent=listed_users_profiling,
        user_lists=("recommended_users",),
    ),
    Dataset(
        "user_updates",
        "marts.user_updates",
        "external_id",
        None,
        "Braze cloud data ingestion, incrementally: EXTERNAL_ID, UPDATED_AT (this publication's, UTC) and "
        "PAYLOAD of the users whose payload changed since the last published night.",
        consent=user_feed_purposes,
        # external_id is computed with the same pseudonymisation as every dataset (tasks/braze.py)
        drop_columns=(
            "run_date",
            "user_id",
            "payload_md5",
            "channels",
            "campaign_purposes",
            "needs_profiling",
        ),
        rename=(("external_id", "EXTERNAL_ID"), ("updated_at", "UPDATED_AT"), ("payload", "PAYLOAD")),
    ),
    Dataset(
        "user_deletes",
        "marts.user_deletes",
        "external_id",
        None,
        "Braze's delete sync: EXTERNAL_ID and UPDATED_AT of every user Braze holds who has no payload tonight "
        "(erased, consent withdrawn, no longer reachable).",
        consent=no_user,  # a delete carries nothing but the id, and a withdrawal is what asks for it
        drop_columns=("run_date",),
        rename=(("external_id", "EXTERNAL_ID"), ("updated_at", "UPDATED_AT")),
    ),
    Dataset(
        "experiment_results",
        "meta.experiment_results",
        "run_date, campaign_id, metric, variant_id",
        None,
        "Every night's experiment analysis: per campaign, variant and metric, the lift against the control "
        "with fixed, CUPED and sequential intervals, adjusted p-values, Bayesian chance to beat control and "
        "the sample-ratio check.",
        consent=no_user,
        history=True,
    ),
    Dataset(
        "uplift_evaluation",
        "meta.uplift_evaluation",
        "campaign_id, variant_id",
        None,
        "Per campaign and variant: the uplift model chosen on validation and measured on test units: Qini, "
        "AUUC, uplift at 10, 20 and 30% per group, random targeting's value and the margin over it with "
        "bootstrap intervals, and whether it drives the personalized policy.",
        consent=no_user,
        this_run_only=True,
    ),
    Dataset(
        "allocation_decisions",
        "meta.allocation_decisions",
        "run_date, campaign_id, variant_id",
        None,
        "The decision log: each campaign arm's share per night, the share the night before, and why.",
        consent=no_user,
        history=True,
    ),
    Dataset(
        "policy_evaluation",
        "meta.policy_evaluation",
        "run_date, campaign_id, policy, metric, estimator",
        None,
        "Off-policy evaluation per night: each campaign's candidate policies (each variant alone, the bandit, the "
        "contextual bandit, as logged) valued per send from the logged sends by IPW, self-normalised IPW and "
        "doubly robust estimators, with bootstrap intervals and effective sample sizes.",
        consent=no_user,
        history=True,
    ),
    Dataset(
        "fairness_audit",
        "meta.fairness_audit",
        "attribute, subject, subject_id, metric, group_value",
        None,
        "Per sensitive attribute and group: selection by campaign and variant, category exposure and mean "
        "propensity, with the disparate-impact ratio against the most-favoured group and whether it is flagged.",
        consent=no_user,
        this_run_only=True,
    ),
    Dataset(
        "data_quality",
        "marts.data_quality",
        "stage, table_name, rule",
        None,
        "Every data-quality check of the run: stage, table, rule, severity, outcome, unexpected rows.",
        consent=no_user,
        this_run_only=True,
        # samples of unexpected values may hold ids or free text: they stay in the warehouse
        drop_columns=("unexpected_sample",),
    ),
)


PSEUDONYMS = "publish_pseudonyms"  # the dataset's users and their pseudonyms, registered while it is read
PSEUDONYM_COLUMN = "_pseudonym"


def dataset_parts(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, ctx: RunContext, key: bytes | None, rows_per_file: int
) -> Iterator[pl.DataFrame]:
    """The dataset's rows in published order, `rows_per_file` at a time (one frame per part file). DuckDB
    sorts (spilling past its memory limit) and this process holds one part: a dataset of any size is
    published in the memory of one part. With a key, each row carries its user's pseudonym beside the raw
    id (the consent check needs the raw id) and the order is by pseudonym: an order inherited from the raw
    ids would let anyone line pseudonyms up with sequential ids."""
    # table, order and column names come from DATASETS above, never from input
    where = {True: "where run_date = $run_date", False: ""}[dataset.this_run_only]
    where = "where run_date <= $run_date" if dataset.history else where
    params = {"run_date": ctx.run_date} if where else {}
    source = f"select * from {dataset.table} {where}"
    columns = [row[0] for row in con.execute(f"describe {source}", params).fetchall()]
    order = [column.strip() for column in dataset.order_by.split(",")]
    # the rows stream from a cursor of their own: the caller queries `con` between parts
    with con.cursor() as reading:
        if key is not None and "user_id" in columns:
            ids = [row[0] for row in reading.execute(f"select distinct user_id from ({source})", params).fetchall()]
            known = [uid for uid in ids if uid is not None]
            reading.register(PSEUDONYMS, pa.table({
                "user_id": pa.array(known, pa.string()),
                PSEUDONYM_COLUMN: pa.array([pseudonym(key, uid) for uid in known], pa.string()),
            }))  # fmt: skip
            source = (
                f"select published.*, pseudonyms.{PSEUDONYM_COLUMN} from ({source}) as published "
                f"left join {PSEUDONYMS} as pseudonyms using (user_id)"
            )
            order = [PSEUDONYM_COLUMN if column == "user_id" else column for column in order]
        ordered = reading.sql(f"select * from ({source}) order by {', '.join(order)}", params=params or None)
        for part in exact_parts(ordered.to_arrow_reader(rows_per_file), rows_per_file):
            yield pl.from_arrow(part)  # type: ignore[misc]


def exact_parts(reader: pa.RecordBatchReader, rows: int) -> Iterator[pa.Table]:
    """The reader's rows as tables of exactly `rows` rows (the last one shorter; one empty table when there
    are none), so the part files do not depend on how the reader cut its batches."""
    pending: list[pa.RecordBatch] = []
    held, yielded = 0, False
    for batch in reader:
        while batch.num_rows:
            taken = batch.slice(0, rows - held)
            pending.append(taken)
            held += taken.num_rows
            batch = batch.slice(taken.num_rows)
            if held == rows:
                yield pa.Table.from_batches(pending, schema=reader.schema)
                pending, held, yielded = [], 0, True
    if pending or not yielded:
        yield pa.Table.from_batches(pending, schema=reader.schema)


def check_consent(
    con: duckdb.DuckDBPyConnection, dataset: Dataset, frame: pl.DataFrame, settings: Settings
) -> Check | None:
    """Refuse the dataset if a row's user lacks the consent it needs; the passed check, if it has users."""
    if "user_id" not in frame.columns and not dataset.user_lists:
        return None
    if dataset.consent is no_user:
        raise ConsentViolation(
            f"dataset {dataset.name} declares no user data but has user_id; nothing was published"
        )
    parts = dataset.consent(frame, settings)
    required = (
        pl.concat([part.cast({"purpose": pl.Utf8}) for part in parts]).unique(maintain_order=True)
        if parts
        else pl.DataFrame(schema={"user_id": pl.Utf8, "purpose": pl.Utf8})
    )
    con.register("publish_required_consent", required.to_arrow())
    try:
        violations = query(con, "checks/unconsented_rows").pl()
    finally:
        con.unregister("publish_required_consent")
    if violations.height:
        purposes = ", ".join(sorted(set(violations["purpose"].to_list())))
        raise ConsentViolation(
            f"dataset {dataset.name}: {violations.height} row(s) for users without consent for {purposes}; "
            "nothing was published"
        )
    return Check("output", dataset.name, "consent_required", "every row's user has the consent it needs",
                 "user_id", "critical", True, 0, required.height)  # fmt: skip


def pseudonym(key: bytes, user_id: str) -> str:
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX_CHARS]


def pseudonymize(
    frame: pl.DataFrame, key: bytes | None, order_by: list[str] | None = None, lists: tuple[str, ...] = ()
) -> pl.DataFrame:
    """Replace user_id by its keyed hash (HMAC-SHA256), or keep it when config publishes external ids;
    the same for every id in the list columns `lists` (an audience's users): one raw id left in a list
    would undo the pseudonym everywhere else.

    Rows are then sorted by `order_by` (pseudonym included): an order inherited from the raw ids would
    let anyone line pseudonyms up with sequential ids."""
    lists = tuple(column for column in lists if column in frame.columns)
    if key is None or ("user_id" not in frame.columns and not lists):
        return frame
    hashed_frame = frame
    if "user_id" in frame.columns:
        ids = frame["user_id"].unique().sort()
        # typed: an empty list would be polars' Null type, published as an Arrow `null` column
        hashes = pl.Series("_pseudonym", [pseudonym(key, uid) for uid in ids], dtype=pl.Utf8)
        mapping = pl.DataFrame({"user_id": ids, "_pseudonym": hashes})
        hashed_frame = (
            frame.join(mapping, on="user_id", how="left", maintain_order="left")
            .with_columns(pl.col("_pseudonym").alias("user_id"))
            .drop("_pseudonym")
        )
    hashed_frame = pseudonymize_lists(hashed_frame, key, lists)
    return hashed_frame.sort(order_by, maintain_order=True) if order_by else hashed_frame


def pseudonymize_lists(frame: pl.DataFrame, key: bytes | None, lists: tuple[str, ...]) -> pl.DataFrame:
    """Every user id in the list columns `lists` replaced by its pseudonym, id by id, keeping each list's
    order (most likely first)."""
    if key is None:
        return frame
    for column in (column for column in lists if column in frame.columns):
        listed = {uid: pseudonym(key, uid) for uid in frame[column].explode().drop_nulls().unique()}
        frame = frame.with_columns(
            pl.col(column).list.eval(pl.element().replace_strict(listed, return_dtype=pl.Utf8))
        )
    return frame


def _plain(data_type: pa.DataType) -> pa.DataType:
    if pa.types.is_large_string(data_type):
        return pa.string()
    if pa.types.is_large_list(data_type) or pa.types.is_list(data_type):
        return pa.list_(pa.field("element", _plain(data_type.value_type)))  # the name Parquet uses
    return data_type


def pseudonymized_part(frame: pl.DataFrame, key: bytes | None, lists: tuple[str, ...]) -> pl.DataFrame:
    """A part from dataset_parts with its user ids replaced by their pseudonyms (and the ids in the list
    columns `lists`, as pseudonymize does)."""
    if PSEUDONYM_COLUMN in frame.columns and "user_id" in frame.columns:
        frame = frame.with_columns(pl.col(PSEUDONYM_COLUMN).alias("user_id"))
    # a dataset that drops user_id (Braze's feeds name users by EXTERNAL_ID) publishes no pseudonym either
    frame = frame.drop(PSEUDONYM_COLUMN, strict=False)
    return pseudonymize_lists(frame, key, lists)


def plain_types(table: pa.Table) -> pa.Table:
    """Arrow's 32-bit-offset `string` and `list` rather than polars' large ones: what every reader expects."""
    fields = [pa.field(f.name, _plain(f.type), f.nullable) for f in table.schema]
    return table.cast(pa.schema(fields))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def text_columns(table: pa.Table) -> pa.Table:
    """Lists and maps as JSON text, for CSV, which has no nested types."""
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if (
            pa.types.is_list(field.type)
            or pa.types.is_large_list(field.type)
            or pa.types.is_struct(field.type)
        ):
            columns.append(
                pa.array([None if v is None else json.dumps(v) for v in column.to_pylist()], pa.string())
            )
        else:
            columns.append(column)
    return pa.table(columns, names=table.column_names)


def jsonl_rows(table: pa.Table, name: str) -> list[dict[str, Any]]:
    rows = table.to_pylist()
    if name in LINE_SHAPES:  # the exact shapes Amazon Personalize's batch jobs write
        return [LINE_SHAPES[name](row) for row in rows]
    return rows


@contextmanager
def output_file(path: Path, compression: str = "none") -> Iterator[Any]:
    """A binary file to write, gzip-compressed when asked. The gzip header carries no name and a zero
    mtime, so the same rows give the same bytes (and checksum) on every rerun."""
    with path.open("wb") as raw:
        if compression == "gzip":
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as packed:
                yield packed
        else:
            yield raw


def write_jsonl(table: pa.Table, path: Path, name: str, compression: str = "none") -> None:
    with (
        output_file(path, compression) as raw,
        io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as handle,
    ):
        for row in jsonl_rows(table, name):
            handle.write(json.dumps(json_safe(row), default=str, ensure_ascii=False, allow_nan=False) + "\n")


def write_parts(
    table: pa.Table,
    folder: Path,
    name: str,
    rows_per_file: int,
    formats: list[str],
    compression: str = "none",
) -> list[dict]:
    """Split a dataset into part files; the same rows in the same order give the same bytes. CSV and JSON
    lines are gzip-compressed (`.csv.gz`, `.jsonl.gz`) when `compression` says so; Parquet compresses inside."""
    n_parts = max(1, -(-table.num_rows // rows_per_file))
    return [
        file
        for part in range(n_parts)
        for file in write_part(
            table.slice(part * rows_per_file, rows_per_file), folder, name, part, formats, compression
        )
    ]


def write_part(
    chunk: pa.Table, folder: Path, name: str, part: int, formats: list[str], compression: str = "none"
) -> list[dict]:
    """Part file number `part` of a dataset, in each format; what the manifest lists about each file."""
    files = []
    for fmt in formats:
        packed = compression if fmt in ("csv", "jsonl") else "none"
        relative = f"{name}/part-{part:04d}.{fmt}" + (".gz" if packed == "gzip" else "")
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "parquet":
            pq.write_table(chunk, path, compression="zstd", row_group_size=256_000, use_dictionary=True)
        elif fmt == "jsonl":
            write_jsonl(chunk, path, name, packed)
        else:
            with output_file(path, packed) as handle:
                pa_csv.write_csv(text_columns(chunk), handle)
        files.append(
            {
                "path": relative,
                "format": fmt,
                **({"compression": packed} if fmt in ("csv", "jsonl") else {}),
                "rows": chunk.num_rows,
                "bytes": path.stat().st_size,  # of the file as published: compressed, if it is
                "sha256": sha256_file(path),
            }
        )
    return files


def json_safe(value: Any) -> Any:
    """NaN and infinities (a metric with no positives to measure) become null: strict JSON readers reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def model_summary(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": model["version"],
        "objective": model["objective"],
        "trained_cutoff": model["trained_cutoff"],
        "holdout_cutoff": model["holdout_cutoff"],
        "features": model["features"],
        "metrics": model["metrics"],
        "registry_decision": model.get("decision", ""),
    }


def build_feeds(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> None:
    """The derived shapes: Personalize's batch output (Braze's feeds: tasks/braze.py)."""
    materialize(con, "marts/personalize_batch", {"run_date": ctx.run_date})
    materialize(con, "marts/personalize_segments", {"run_date": ctx.run_date})


def publishable_part(frame: pl.DataFrame, dataset: Dataset, key: bytes | None) -> pa.Table:
    """A part from dataset_parts as it is published: ids pseudonymized, internal columns dropped, names and
    types as consumers expect."""
    frame = pseudonymized_part(frame.drop(dataset.drop_columns), key, dataset.user_lists)
    if dataset.name in BRAZE_DATASETS:  # a UTC timestamp (Parquet TIMESTAMP adjusted to UTC), as Braze asks
        frame = frame.with_columns(pl.col("updated_at").dt.replace_time_zone("UTC"))
    return plain_types(frame.rename(dict(dataset.rename)).to_arrow())


@dataclass
class WrittenDataset:
    rows: int
    columns: dict[str, str]
    files: list[dict]
    has_user_ids: bool
    check: Check | None  # the consent check over every part, when the dataset is about users


def write_dataset(
    con: duckdb.DuckDBPyConnection,
    dataset: Dataset,
    ctx: RunContext,
    settings: Settings,
    out: Path,
    key: bytes | None,
) -> WrittenDataset:
    """The dataset's part files under `out`, part by part: each part's users checked for the consent its
    rows need before it is written; on a violation the run's files are removed and nothing is published."""
    formats = [
        "parquet",
        *(["csv"] if dataset.name in settings.publish.csv_datasets else []),
        *(["jsonl"] if dataset.name in settings.publish.jsonl_datasets else []),
    ]
    publish = settings.publish
    written = WrittenDataset(0, {}, [], False, None)
    for number, part in enumerate(dataset_parts(con, dataset, ctx, key, publish.rows_per_file)):
        try:
            check = check_consent(con, dataset, part, settings)
        except ConsentViolation:
            shutil.rmtree(out, ignore_errors=True)
            raise
        if check is not None:
            checked = check.rows_checked + (written.check.rows_checked if written.check else 0)
            written.check = replace(check, rows_checked=checked)
        table = publishable_part(part, dataset, key)
        written.files += write_part(table, out, dataset.name, number, formats, publish.compression)
        written.rows += table.num_rows
        written.columns = {field.name: str(field.type) for field in table.schema}
        written.has_user_ids = "user_id" in part.columns
    return written


@task(name="write-datasets", cache_policy=NO_CACHE)
@reported("write-datasets")
def write_datasets(
    settings: Settings,
    ctx: RunContext,
    models: dict[str, dict[str, Any]],
    quality: dict[str, Any],
    outputs: dict[str, Any] | None = None,
    only: tuple[str, ...] | None = None,
) -> Path:
    """Write the run's files and manifest locally under the run folder; return that folder. `only` names
    the datasets of a partial publication (the experiments flow run on its own)."""
    out = ctx.run_dir / ("publish" if only is None else "publish-" + "-".join(only))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    key = settings.pseudonym_key()
    datasets: dict[str, Any] = {}
    with connect(settings) as con:
        ensure_tables(con)
        ensure_audit_table(con)
        braze_updated_at = None
        if only is None:
            build_feeds(con, ctx)
            braze_updated_at = build_braze_feeds(con, settings, ctx)
        output_checks: list[Check] = []
        for dataset in DATASETS:
            if only is not None and dataset.name not in only:
                continue
            if dataset.name == "data_quality":  # last: it reports the checks made above
                store_results(con, ctx, ("output",), output_checks)
                materialize(con, "marts/data_quality")
            # a campaign system that must match on the real id gets it, for its dataset only
            external = dataset.name in settings.publish.external_id_datasets
            written = write_dataset(con, dataset, ctx, settings, out, None if external else key)
            output_checks += [written.check] if written.check else []
            datasets[dataset.name] = {
                "description": dataset.description,
                # where BI on the DuckDB file finds these rows: not every dataset is a mart (README)
                "warehouse_table": dataset.table,
                "rows": written.rows,
                "columns": written.columns,
                # a baseline that served has no version: the manifest names no model then
                "model_versions": {dataset.model: models[dataset.model]["version"]}
                if dataset.model in models
                and served_by_label(models[dataset.model], dataset.model) == dataset.model
                else {},
                # a model that lost to its baseline on the holdout does not serve: the manifest says so
                "served_by": served_by_label(models[dataset.model], dataset.model)
                if dataset.model in models
                else None,
                # Braze's feeds name users by EXTERNAL_ID, published as user_updates' ids are
                "user_id": braze_id_kind(settings)
                if dataset.name in BRAZE_DATASETS
                else None
                if not written.has_user_ids and not dataset.user_lists
                else ("external" if external or key is None else "pseudonymous"),
                "files": written.files,
            }
    if output_checks:  # the run's checks add up to the published data_quality rows
        quality = combine(quality, QualityReport(output_checks).summary())
    docs = {}
    for stage_docs in sorted((ctx.run_dir / "data_docs").glob("*/index.html")) if only is None else []:
        stage = stage_docs.parent.name
        shutil.copytree(stage_docs.parent, out / "data_docs" / stage)
        docs[stage] = f"data_docs/{stage}/index.html"
    report = ctx.run_dir / "report" / REPORT_FILE
    if report.exists():
        shutil.copy(report, out / REPORT_FILE)
    from tailor.tasks.tables import manifest_tables  # tables.py reads DATASETS from this module

    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "run_date": ctx.run_date.isoformat(),
        "data_cutoff_utc": ctx.cutoff.isoformat(),
        "config_sha256": settings.config_sha256,
        "tailor_version": version("tailor"),
        "user_id": "pseudonymous (HMAC-SHA256, 128 bits)" if key else "external",
        "models": {name: model_summary(model) for name, model in sorted(models.items())},
        "data_quality": quality,
        "outputs": outputs or {},
        "data_docs": docs,
        "report": REPORT_FILE if report.exists() else None,
        "datasets": datasets,
        "tables": manifest_tables(settings) if only is None else None,  # the nightly runs' BI tables
    }
    if braze_updated_at is not None:  # the Braze copies of user_updates and user_deletes
        manifest["braze"] = braze_manifest(datasets, ctx.run_date, braze_updated_at, braze_id_kind(settings))
    (out / "manifest.json").write_text(
        json.dumps(json_safe(manifest), indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"
    )
    return out


def published_quality(local_run: Path) -> dict[str, Any]:
    """The run's data-quality summary as its manifest publishes it: the gate's checks and those made while
    writing the datasets (consent), so the counts match the published data_quality rows."""
    return json.loads((local_run / "manifest.json").read_text())["data_quality"]


def _retry_on_connection_errors(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the target check only when the endpoint did not answer: a missing bucket stays missing."""
    return isinstance(state.data, BaseException) and is_connection_error(state.data)


@task(
    name="check-target",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_retry_on_connection_errors,
    timeout_seconds=60,
    cache_policy=NO_CACHE,
)
def check_publish_target(settings: Settings) -> str:
    """Before extract: the publish target takes a write (reachable, the bucket exists, the credentials may
    write), so a bad target fails the run in seconds instead of after the whole night's work."""
    target = settings.resolve_uri(settings.publish.target)
    check_target(target, settings.storage)
    return target


DOCS_INDEX = re.compile(r"/data_docs/[^/]+/index\.html$")
ATTEMPT_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]+$")
POINTER = "latest.json"


def new_attempt(now: datetime) -> str:
    """Sortable by publish time (UTC, to the second) and unique: the suffix parts two in the same second."""
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def attempt_time(attempt: str) -> datetime:
    return datetime.strptime(attempt[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def global_pointer_key(root: str) -> str:
    """The nightly runs' `latest.json` sits at the top of the target (where readers always found it)."""
    return POINTER if root == "runs" else f"{root}/{POINTER}"


def date_pointer_key(root: str, run_date: str) -> str:
    return f"{root}/{run_date}/{POINTER}"


def read_pointer(store: ObjectStore, key: str) -> dict[str, Any] | None:
    raw = store.get_bytes(key)
    if raw is None:
        return None
    try:
        pointer = json.loads(raw)
    except ValueError:
        return None
    return pointer if isinstance(pointer, dict) and isinstance(pointer.get("manifest"), str) else None


def pointer_folder(pointer: dict[str, Any] | None) -> str | None:
    """The folder a pointer names (an attempt's, or a whole date's in the layout before attempts)."""
    return str(PurePosixPath(pointer["manifest"]).parent) if pointer else None


def publish_attempt(
    store: ObjectStore,
    local_run: Path,
    run_date: date,
    root: str = "runs",
    keep_superseded_hours: float = 24,
    now: datetime | None = None,
    before_pointers: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Upload a run into a new attempt folder, then its manifest, then the date's pointer, then (when the
    date is not older than the one it names) the global `latest.json`; then remove attempts superseded for
    longer than `keep_superseded_hours`. `now` fixes the clock (tests). `before_pointers(attempt_folder)`
    runs once the attempt is complete and before any pointer moves (the BI tables, tasks/tables.py)."""
    day = run_date.isoformat()
    attempt = new_attempt(now or datetime.now(UTC))
    folder = f"{root}/{day}/{attempt}"
    manifest_key = f"{folder}/manifest.json"
    files = sorted(p for p in local_run.rglob("*") if p.is_file() and p != local_run / "manifest.json")
    written = [f"{folder}/{path.relative_to(local_run).as_posix()}" for path in files]
    # data files and Data Docs first, several at once (one small file at a time leaves the link idle), the
    # manifest once they are all in, the pointers last: until then no reader is sent to this folder
    with ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
        list(pool.map(store.put_file, files, written))
    store.put_file(local_run / "manifest.json", manifest_key)
    written.append(manifest_key)
    tables = before_pointers(folder) if before_pointers else None

    published_at = now or datetime.now(UTC)
    pointer = {
        "run_date": day,
        "attempt": attempt,
        "folder": folder,
        "manifest": manifest_key,
        "published_at": f"{published_at.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}",
    }
    body = (json.dumps(pointer, indent=2) + "\n").encode()
    store.put_bytes(body, date_pointer_key(root, day))
    latest_key = global_pointer_key(root)
    current = read_pointer(store, latest_key)
    # only forward: republishing an older date (a backfill) moves that date's pointer, not the newest one
    moved = current is None or str(current.get("run_date", "")) <= day
    if moved:
        store.put_bytes(body, latest_key)
    try:
        removed = remove_superseded(store, root, keep_superseded_hours, now or datetime.now(UTC))
    except (StorageError, OSError) as error:
        # the run is published; old attempts wait for the next publish rather than failing this one
        log.warning("publish: superseded attempts not removed this time: %s", error)
        removed = []
    return {
        "target": store.root,
        "attempt": attempt,
        "manifest": store.uri(manifest_key),
        "latest": store.uri(latest_key),
        "date_latest": store.uri(date_pointer_key(root, day)),
        "latest_moved": moved,
        "removed_attempts": removed,
        "tables": tables,
        "files": [
            store.uri(key)
            for key in written
            if "/data_docs/" not in key and not key.endswith(("manifest.json", REPORT_FILE))
        ],
        "report": next((store.uri(key) for key in written if key.endswith(REPORT_FILE)), None),
        # each stage's front page (sources, features)
        "data_docs": [store.uri(key) for key in written if DOCS_INDEX.search(key)],
    }


def remove_superseded(store: ObjectStore, root: str, keep_hours: float, now: datetime) -> list[str]:
    """Remove attempt folders no pointer names once they have been out of use for `keep_hours`: an attempt
    older than its date's current one since that pointer moved (at the latest), any other (a publish that
    died mid-upload) since it started. A date whose pointer cannot be read is left alone."""
    attempts: dict[str, dict[str, list[str]]] = {}
    dates_with_pointer = set()
    for key in store.list_keys(f"{root}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] == POINTER:
            dates_with_pointer.add(parts[1])
        elif len(parts) >= 4 and ATTEMPT_PATTERN.match(parts[2]):
            attempts.setdefault(parts[1], {}).setdefault(parts[2], []).append(key)
    named = {pointer_folder(read_pointer(store, global_pointer_key(root)))}
    keep = timedelta(hours=keep_hours)
    removed = []
    for day, found in sorted(attempts.items()):
        if len(found) == 1 and day in dates_with_pointer:
            continue  # its only attempt is the one its pointer names: nothing to read
        pointer = read_pointer(store, date_pointer_key(root, day)) if day in dates_with_pointer else None
        if day in dates_with_pointer and pointer is None:
            continue
        current = PurePosixPath(pointer["manifest"]).parent.name if pointer else None
        try:
            moved_at = datetime.strptime(pointer["published_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except (TypeError, KeyError, ValueError):
            moved_at = attempt_time(current) if current and ATTEMPT_PATTERN.match(current) else None
        for attempt, keys in sorted(found.items()):
            folder = f"{root}/{day}/{attempt}"
            if attempt == current or folder in named:
                continue
            # superseded no later than the current attempt's pointer moved; otherwise never current at all
            since = moved_at if current and moved_at and attempt < current else attempt_time(attempt)
            if now - since >= keep:
                store.delete_keys(keys)
                removed.append(folder)
    return removed


@task(name="upload", retries=3, retry_delay_seconds=[2, 5, 15], cache_policy=NO_CACHE)
@reported("upload")
def upload_run(
    settings: Settings, ctx: RunContext, local_run: Path, target: str, root: str = "runs"
) -> dict[str, Any]:
    """Publish the run as a new attempt (see the module's docstring); retried with backoff as a whole,
    each try in a folder of its own.

    `latest.json` only moves forward: publishing an older date (a backfill) leaves it on the newest run.
    The experiments flow run on its own publishes under `experiments/` with its own `latest.json`.
    """
    from tailor.tasks.tables import tables_step  # tables.py reads DATASETS from this module

    started = time.monotonic()
    store = open_store(target, settings.storage)
    if root == "runs":
        check_feed_current(settings, ctx, local_run)
    tables = tables_step(settings, store, target, local_run, ctx.run_date, root)
    previous = pointer_folder(read_pointer(store, global_pointer_key(root)))

    def before_pointers(attempt_folder: str) -> dict[str, Any] | None:
        written = tables(attempt_folder) if tables else None
        if (local_run / REPORT_FILE).exists():
            # rendered again now that the files are up: it times the upload and links what was published;
            # the report rendered before the publish is already in the attempt, so a failure here costs
            # only the timings and links, never the night
            try:
                report = published_report(settings, ctx, local_run, attempt_folder, previous, started)
            except Exception as error:
                log.warning(
                    "publish: the report keeps its first rendering (%s: %s)", type(error).__name__, error
                )
            else:
                store.put_bytes(report, f"{attempt_folder}/{REPORT_FILE}")
        return written

    published = publish_attempt(
        store, local_run, ctx.run_date, root, settings.publish.keep_superseded_attempts_hours,
        before_pointers=before_pointers,
    )  # fmt: skip
    if root == "runs":
        # Braze loads every new file under braze/ as it lands: they go up only once the night is published,
        # and what Braze holds is recorded right after them (a retry skips the files already there)
        braze_files = upload_braze_files(store, local_run)
        published["braze"] = record_published(settings, ctx, local_run, datetime.now(UTC))
        published["braze_files"] = [store.uri(key) for key in braze_files]
    return published
