"""Features: staging models, then point-in-time feature tables at every cutoff the run needs.

Training examples are built at past cutoffs whose label windows end by the run's cutoff; scoring
examples at the run's cutoff. Every feature table is partitioned by `cutoff`, so a rerun replaces its
partitions and a feature computed at cutoff T never changes when data after T arrives.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import duckdb
from prefect import Task, task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy

from tailor.config import RecommendationsConfig, Settings
from tailor.progress import progress, reported
from tailor.schema import ATTRIBUTE_TYPES
from tailor.sql import bind, materialize, materialize_partition, scalar, table_exists
from tailor.tasks.extract import quote_identifier
from tailor.tasks.repeats import RepeatDecision, excluded_event_types
from tailor.tasks.repeats import decide as decide_repeats
from tailor.tasks.repeats import save as save_repeats
from tailor.tasks.retrain import code_version, retrain_reason, user_sql_version
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

STAGING_MODELS = (
    "staging/stg_users",
    "staging/stg_items",
    "staging/stg_consents",
    "staging/stg_interactions",
    "staging/stg_purchase_days",
    "staging/stg_campaign_exposures",
)
PER_CUTOFF_MODELS = ("features/user_features", "features/item_features")
# what candidate generation reads: built only at the ranking cutoffs
RANKING_CUTOFF_MODELS = (
    "features/user_category_affinity",
    "features/user_recent_items",
    "features/item_cooccurrence",
    "features/item_repurchase",
)
# Large tables needed only by the run that built them.
TRANSIENT_MODELS = (
    "features/candidate_users",
    "features/user_item_events",
    "features/user_item_similarity",
    "features/user_item_purchases",
    "features/campaign_click_examples",
    "features/candidates",
    "features/ranking_examples",
    "features/propensity_examples",
    "features/item_cooccurrence",
)


# candidates and their features are built for this many users at a time: about 100 candidates each, so
# a bucket is some 5M rows, whatever the company's size
USERS_PER_BUCKET = 50_000


@dataclass(frozen=True)
class Cutoffs:
    """The instants a run computes features at."""

    ranking_train: datetime
    ranking_holdout: datetime
    propensity_train: tuple[datetime, ...]  # consecutive past windows, stacked for training
    propensity_holdout: datetime
    score: datetime
    run_date: date  # the run these cutoffs belong to: its run-level decisions (repeat purchases) apply

    def ranking(self) -> tuple[datetime, ...]:
        return (self.ranking_train, self.ranking_holdout, self.score)

    def all(self) -> list[datetime]:
        return sorted(
            {
                self.ranking_train,
                self.ranking_holdout,
                *self.propensity_train,
                self.propensity_holdout,
                self.score,
            }
        )


def cutoffs_for(settings: Settings, ctx: RunContext) -> Cutoffs:
    label_days = settings.ranking.label_days
    horizon = settings.propensity.horizon_days
    return Cutoffs(
        ranking_train=ctx.cutoff_minus(2 * label_days),
        ranking_holdout=ctx.cutoff_minus(label_days),
        propensity_train=tuple(
            ctx.cutoff_minus((2 + window) * horizon) for window in range(settings.propensity.training_windows)
        ),
        propensity_holdout=ctx.cutoff_minus(horizon),
        score=ctx.cutoff,
        run_date=ctx.run_date,
    )


def cutoff_day(ctx: RunContext, cutoff: datetime) -> date:
    """The run date a cutoff belongs to (a day in the config's zone): rows from files dated before it
    were known at the cutoff."""
    return ctx.run_date - timedelta(days=(ctx.cutoff - cutoff).days)


class TrainingWindowError(ValueError):
    """The data does not reach back far enough for the training windows; the message says what to change."""


def check_training_windows(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, cuts: Cutoffs
) -> None:
    """Fail in one line, before the feature build, when the earliest training cutoff would see no
    interaction, user or item: the run could only stop later with a confusing error."""
    earliest = min(cuts.all())
    known_day = cutoff_day(ctx, earliest)
    advice = (
        "deliver older data, or shorten the windows (ranking.label_days, propensity.horizon_days, "
        "propensity.training_windows)"
    )
    first_event = scalar(con, "select min(occurred_at) from staging.stg_interactions")
    if first_event is None or first_event >= earliest:
        raise TrainingWindowError(
            f"interactions: the earliest training cutoff is {earliest:%Y-%m-%d} but the first interaction is "
            f"{'missing' if first_event is None else f'{first_event:%Y-%m-%d}'}; {advice}"
        )
    for table, timestamp in (("users", "created_at"), ("items", "published_at")):
        known = scalar(
            con,
            f"select count(*) from staging.stg_{table} where {timestamp} < $cutoff and known_on < $day",
            {"cutoff": earliest, "day": known_day},
        )
        if known:
            continue
        files = con.execute(
            "select min(file_date), max(file_date), count(*) from meta.loaded_files where source = $source",
            {"source": table},
        ).fetchall()[0]
        dated = f"dated {files[0]} to {files[1]}" if files[0] is not None else "undated"
        raise TrainingWindowError(
            f"{table}: no row is known before the earliest training cutoff {earliest:%Y-%m-%d} (its {files[2]} "
            f"file(s) are {dated}, and no {timestamp} is earlier); give each row its own {timestamp}, or "
            f"{advice}"
        )


def build_staging_models(
    con: duckdb.DuckDBPyConnection, ctx: RunContext, settings: Settings | None = None
) -> dict[str, int]:
    """The staging models; `settings` brings the rules for items that may never be recommended (without
    it, the default rules: tools that stage data outside a run have no config to give)."""
    exclude = (settings.recommendations if settings else RecommendationsConfig()).exclude
    attributes = list(settings.user_features.attributes) if settings else []
    params = {
        "run_date": ctx.run_date,
        "cutoff": ctx.cutoff,
        "attribute_names": attributes,
        **exclude.sql_params(),
    }
    return {model.split("/")[1]: materialize(con, model, params) for model in STAGING_MODELS}


def build_feature_models(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext
) -> tuple[dict[str, int], str | None]:
    """Every feature table the night needs, and why it trains (None: it scores with the models serving now,
    so only the scoring cutoff's features are built). Whether it trains is decided here, once, since
    training needs the training cutoffs' features."""
    cuts = cutoffs_for(settings, ctx)
    check_training_windows(con, settings, ctx, cuts)
    repeats = decide_repeats(con, settings, cuts.score)
    save_repeats(con, ctx.run_date, repeats)
    log.info("repeat purchases %s", repeats.reason)
    reason = retrain_reason(con, settings, ctx)
    if reason is None:
        log.info("no training tonight: the models that serve now score (registry.retrain_every_days)")
    else:
        log.info("training tonight: %s", reason)
    with_training = reason is not None
    counts: dict[str, int] = {}
    feature_cutoffs = cuts.all() if with_training else [cuts.score]
    with progress("features: users and items", total=len(feature_cutoffs), unit="cutoffs") as bar:
        for cutoff in feature_cutoffs:
            counts |= build_cutoff_features(
                con, settings, cutoff, cutoff_day(ctx, cutoff), with_ranking=cutoff in cuts.ranking()
            )
            bar.advance(1, note=f"{cutoff:%Y-%m-%d}")
    candidate_cutoffs = [
        (cutoff, is_training)
        for cutoff, is_training in ((cuts.ranking_train, True), (cuts.ranking_holdout, True), (cuts.score, False))
        if with_training or not is_training
    ]
    with progress("features: candidates", total=len(candidate_cutoffs), unit="cutoffs") as bar:
        for cutoff, is_training in candidate_cutoffs:
            counts |= build_candidates(con, settings, cutoff, is_training, repeats)
            bar.advance(1, note=f"{cutoff:%Y-%m-%d}")
    counts["campaign_click_examples"] = materialize_partition(
        con,
        "features/campaign_click_examples",
        "cutoff",
        {"cutoff": cuts.score, "cutoff_day": ctx.run_date},
    )
    training_cutoffs = (*cuts.propensity_train, cuts.propensity_holdout) if with_training else ()
    for cutoff in (*training_cutoffs, cuts.score):
        params = {"cutoff": cutoff, "horizon_days": settings.propensity.horizon_days}
        counts[f"propensity_examples@{cutoff:%Y-%m-%d}"] = materialize_partition(
            con, "features/propensity_examples", "cutoff", params
        )
    drop_stale_partitions(con, min(cuts.all()))
    return counts, reason


def build_cutoff_features(
    con: duckdb.DuckDBPyConnection, settings: Settings, cutoff: datetime, known_before: date, with_ranking: bool
) -> dict[str, int]:
    """User and item features as of one cutoff; at a ranking cutoff also affinity, recent-item and
    co-occurrence features."""
    ranking = settings.ranking
    params = {
        "cutoff": cutoff,
        "cutoff_day": known_before,
        "popularity_days": ranking.popularity_days,
        "half_life_days": ranking.affinity_half_life_days,
        "history_days": ranking.history_days,
        "recent_items": ranking.recent_items,
        "neighbours": ranking.neighbours,
        "cooccurrence_max_users": ranking.cooccurrence_max_users,
        "repeat_history_days": ranking.repeat_history_days,
        "seed": settings.seed,
        "attribute_names": list(settings.user_features.attributes),
    }
    stage_user_sql_features(con, settings, cutoff, known_before)
    return {
        f"{model.split('/')[1]}@{cutoff:%Y-%m-%d}": materialize_partition(con, model, "cutoff", params)
        for model in PER_CUTOFF_MODELS + (RANKING_CUTOFF_MODELS if with_ranking else ())
    }


class UserFeaturesError(ValueError):
    """The company's user-feature SQL (user_features.sql) cannot run or does not return what config says."""


def stage_user_sql_features(
    con: duckdb.DuckDBPyConnection, settings: Settings, cutoff: datetime, known_before: date
) -> None:
    """The temp table user_sql_features that sql/features/user_features.sql joins: the company's own
    per-user features as of `cutoff` (user_id alone when it has none), typed as config declares them."""
    config = settings.user_features
    if config.sql is None:
        con.execute("create or replace temp table user_sql_features (user_id varchar)")
        return
    path = settings.resolve(config.sql)
    label = f"user_features.sql {config.sql}"
    try:
        text = path.read_text(encoding="utf-8").strip().rstrip(";")
    except OSError as error:
        raise UserFeaturesError(f"{label}: cannot read {path}: {error.strerror}") from error
    try:
        bound = bind(text, {"cutoff": cutoff, "cutoff_day": known_before})
    except KeyError as error:
        raise UserFeaturesError(
            f"{label}: only $cutoff and $cutoff_day are bound ({error.args[0]})"
        ) from error
    try:
        con.execute(f"create or replace temp table user_sql_features_raw as {text}", bound)
    except duckdb.Error as error:
        raise UserFeaturesError(f"{label}: {str(error).strip().splitlines()[0]}") from error
    returned = [row[0] for row in con.execute("describe user_sql_features_raw").fetchall()]
    expected = ["user_id", *config.sql_columns]
    missing = [name for name in expected if name not in returned]
    extra = [name for name in returned if name not in expected]
    if missing or extra:
        raise UserFeaturesError(
            f"{label}: returns {', '.join(returned)}; expected user_id and the sql_columns "
            f"({', '.join(config.sql_columns)})"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; not declared {', '.join(extra)}" if extra else "")
        )
    repeated = scalar(
        con,
        "select count(*) from (select user_id from user_sql_features_raw group by user_id having count(*) > 1)",
    )
    if repeated:
        raise UserFeaturesError(
            f"{label}: {repeated} user_id value(s) have more than one row; one row per user"
        )
    # identifiers are the declared names (lowercase identifiers, checked by config); values are never formatted
    typed = ", ".join(
        f"cast({quote_identifier(name)} as {ATTRIBUTE_TYPES[kind]}) as {quote_identifier(name)}"
        for name, kind in config.sql_columns.items()
    )
    try:
        con.execute(
            "create or replace temp table user_sql_features as "
            f"select cast(user_id as varchar) as user_id, {typed} from user_sql_features_raw"
        )
    except duckdb.Error as error:
        raise UserFeaturesError(
            f"{label}: a column does not hold its declared kind ({str(error).strip().splitlines()[0]})"
        ) from error
    finally:
        con.execute("drop table if exists user_sql_features_raw")


def build_candidates(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    cutoff: datetime,
    is_training: bool,
    repeats: RepeatDecision,
) -> dict[str, int]:
    """The candidate users (a training cutoff samples them), then their events with each item (one pass
    for all of them), similarity and purchase features, candidates and ranking examples, built in buckets
    of USERS_PER_BUCKET users."""
    ranking = settings.ranking
    params = {
        "cutoff": cutoff,
        "is_training": is_training,
        "label_days": ranking.label_days,
        "max_users": ranking.max_training_users,
        "seed": settings.seed,
        "n_popular": ranking.popular_candidates,
        "n_per_category": ranking.category_candidates,
        "top_categories": ranking.top_categories,
        "n_similar": ranking.similar_candidates,
        "n_new": ranking.new_candidates,
        "new_item_days": ranking.new_item_days,
        "excluded_event_types": excluded_event_types(settings, repeats),
        "allow_repeat": repeats.is_allowed,
        "n_buy_again": ranking.buy_again_candidates,
        "recent_days": ranking.recent_days,
        "repeat_history_days": ranking.repeat_history_days,
        "audience_item_ids": settings.item_audiences.items,
        "audience_categories": settings.item_audiences.categories,
        "audience_per_category": settings.item_audiences.items_per_category,
    }
    users = materialize_partition(con, "features/candidate_users", "cutoff", params)
    buckets = max(1, -(-users // USERS_PER_BUCKET))
    return {f"candidate_users@{cutoff:%Y-%m-%d}": users} | {
        f"{model.split('/')[1]}@{cutoff:%Y-%m-%d}": materialize_partition(
            con, model, "cutoff", params, buckets
        )
        for model in (
            "features/user_item_events",
            "features/user_item_similarity",
            "features/user_item_purchases",
            "features/candidates",
            "features/ranking_examples",
        )
    }


DROPPED_BUILD = "dropped"  # a build's record whose transient tables are gone: it matches no night's data


def drop_other_nights_features(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> bool:
    """Drop the feature tables only a night's own stages read (TRANSIENT_MODELS: candidates, examples,
    similarity, the largest tables in the warehouse) unless they are tonight's: tonight rebuilds them, so
    erasing users from them and copying them when the file is rewritten is wasted work (a rewrite at a
    million users copied 117M similarity rows). A rerun of tonight keeps them to reuse its build. The record
    of the dropped build stays, marked, so no rerun of that night takes Prefect's cached result for
    features that are gone."""
    built = (
        [row[0] for row in con.execute("select run_date from meta.feature_builds").fetchall()]
        if table_exists(con, "meta.feature_builds")
        else []
    )
    if built == [ctx.run_date]:
        return False
    for model in TRANSIENT_MODELS:
        con.execute(f"drop table if exists {model.replace('/', '.')}")
    if built:
        con.execute("update meta.feature_builds set data_fingerprint = $dropped", {"dropped": DROPPED_BUILD})
    return True


def drop_stale_partitions(con: duckdb.DuckDBPyConnection, oldest_needed: datetime) -> None:
    for model in TRANSIENT_MODELS:
        table = model.replace("/", ".")
        con.execute(f"delete from {table} where cutoff < $oldest", {"oldest": oldest_needed})


@task(name="build-staging", cache_policy=NO_CACHE)
@reported("build-staging")
def build_staging(settings: Settings, ctx: RunContext) -> dict[str, int]:
    """Only the staging models: what a flow that analyses but does not train (experiments) reads."""
    with connect(settings) as con:
        return build_staging_models(con, ctx, settings)


@task(name="build-features", cache_policy=NO_CACHE)
@reported("build-features")
def build_features(settings: Settings, ctx: RunContext) -> dict[str, int]:
    """Staging models, then features, candidates and training examples (SQL in DuckDB); records whether
    the night trains for the train stage."""
    with connect(settings) as con:
        counts = build_staging_models(con, ctx, settings)
        features, reason = build_feature_models(con, settings, ctx)
        counts.update(features)
        con.execute(
            "create table if not exists meta.feature_builds (run_date date, data_fingerprint varchar)"
        )
        con.execute("alter table meta.feature_builds add column if not exists retrain_reason varchar")
        con.execute("delete from meta.feature_builds")
        con.execute(
            "insert into meta.feature_builds values ($d, $f, $reason)",
            {"d": ctx.run_date, "f": data_fingerprint(con, ctx), "reason": reason},
        )
    return counts


def planned_training(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> tuple[bool, str]:
    """(whether tonight trains, why) as tonight's feature build decided; a night with no recorded build
    (features built outside the flow) trains."""
    if not table_exists(con, "meta.feature_builds"):
        return True, "no feature build recorded"
    con.execute("alter table meta.feature_builds add column if not exists retrain_reason varchar")
    rows = con.execute(
        "select retrain_reason from meta.feature_builds where run_date = $d", {"d": ctx.run_date}
    ).fetchall()
    if not rows:
        return True, "no feature build recorded tonight"
    return rows[0][0] is not None, rows[0][0] or "within registry.retrain_every_days of the last training"


# Reusing a night's features: a rerun of the same night (after a failed upload, say) with nothing new
# loaded skips the feature build, the run's most expensive step, through Prefect's result cache.


def data_fingerprint(con: duckdb.DuckDBPyConnection, ctx: RunContext) -> str:
    """Which files, in which versions, the run's data comes from (and how many users were erased)."""
    files = con.execute(
        "select coalesce(string_agg(source || '|' || file_uri || '|' || coalesce(fingerprint, ''), ',' "
        "order by source, file_uri), '') from meta.loaded_files where coalesce(file_date < $d, true)",
        {"d": ctx.run_date},
    ).fetchall()[0][0]
    erased = (
        scalar(con, "select count(*) from meta.deletion_register")
        if table_exists(con, "meta.deletion_register")
        else 0
    )
    return hashlib.sha256(f"{files}#{erased}".encode()).hexdigest()


def features_cache_key(context: Any, parameters: dict[str, Any]) -> str | None:
    """The key of a reusable build: the same night, config, code and data. No key (so a build) when the
    warehouse's current build is of another night or other data (or its tables were dropped), since the
    features live there, not in the cached result."""
    settings: Settings = parameters["settings"]
    ctx: RunContext = parameters["ctx"]
    with connect(settings) as con:
        fingerprint = data_fingerprint(con, ctx)
        built = (
            con.execute("select run_date, data_fingerprint from meta.feature_builds").fetchall()
            if table_exists(con, "meta.feature_builds")
            else []
        )
    if built and built != [(ctx.run_date, fingerprint)]:
        return None
    key = (
        f"{settings.config_sha256}|{user_sql_version(settings)}|{ctx.run_date}|{fingerprint}|{code_version()}"
    )
    return "features-" + hashlib.sha256(key.encode()).hexdigest()


def build_features_cached(settings: Settings, force: bool = False) -> Task:
    """build_features through Prefect's result cache (kept in Prefect's local result storage, under
    PREFECT_HOME); `force` rebuilds."""
    # the policy, not cache_key_fn: the task's own NO_CACHE would stay set beside a key function (Prefect
    # warns on every run that both are set)
    return build_features.with_options(
        cache_policy=CacheKeyFnPolicy(cache_key_fn=features_cache_key), persist_result=True, refresh_cache=force
    )
