"""Train: a LightGBM propensity model (binary) and a LightGBM ranking model (lambdarank).

Each is fitted at a past cutoff, early-stopped on a seeded share of that window's users, and measured
on the next, later window it never saw (a time-based holdout), beside a baseline on the same split.
Models are saved as files in the run folder and registered in `meta.models`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import human, metrics
from tailor.calibration import apply_platt, calibration_table, fit_platt
from tailor.config import Settings
from tailor.progress import boosting_rounds, reported
from tailor.sql import query, read_partition, scalar
from tailor.tasks.features import Cutoffs, cutoffs_for, planned_training
from tailor.tasks.repeats import PURCHASE, excluded_event_types
from tailor.tasks.repeats import load as load_repeats
from tailor.tasks.retrain import record_training
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

PROPENSITY_FEATURES = (
    "country",
    "days_since_signup",
    "n_events_7d",
    "n_events_30d",
    "n_events_90d",
    "n_clicks_30d",
    "n_carts_30d",
    "n_purchases_30d",
    "n_purchases_90d",
    "revenue_cents_90d",
    "n_distinct_items_30d",
    "n_active_days_30d",
    "days_since_last_event",
    "days_since_last_purchase",
    "events_per_day_90d",
    "purchases_per_day_90d",
    "n_campaign_sends_90d",
    "n_campaign_opens_90d",
    "n_campaign_clicks_90d",
)
RANKING_FEATURES = (
    "is_from_popular",
    "is_from_category",
    "is_from_recent",
    "is_from_similar",
    "is_from_new",
    "n_events_7d",
    "n_events_30d",
    "n_distinct_items_30d",
    "n_purchases_90d",
    "days_since_last_event",
    "price_cents",
    "days_since_published",
    "popularity_relative",
    "trend_ratio",
    "popularity_rank",
    "user_category_affinity",
    "user_category_affinity_share",
    "user_category_rank",
    "n_user_item_events_30d",
    "max_user_item_relevance_30d",
    "days_since_user_item_event",
    "cooccurrence_relative",
    "cooccurrence_percentile",
    "max_cooccurrence",
    "n_similar_recent_items",
    "is_from_buy_again",
    "n_user_item_purchases",
    "days_since_user_item_purchase",
    "user_item_interval_days",
    "user_item_basket_share",
    "item_repurchase_interval_days",
    "item_repeat_share",
    "repurchase_due_ratio",
)
# The simple orders a ranker must beat on its own holdout before it may serve, best last on ties:
# buy-again backfilled with popularity is never worse than buy-again alone.
RANKING_BASELINES = ("popularity", "buy_again", "buy_again_popularity")
# The simple scores a propensity model must beat: how lately and how often the user was active.
PROPENSITY_BASELINES = {"recency": ("days_since_last_event", -1.0), "frequency": ("n_purchases_90d", 1.0)}
MODEL = "model"
BASELINE_PREFIX = "baseline:"
RANKING, DISCOVERY = "ranking", "discovery"
NOTHING = "none"  # the registry's word for a model that serves nothing tonight
CONSTANT_RATE = "constant_rate"  # a conversion model's baseline: the training conversion rate for everyone
CATEGORICAL = ("country", "language", "age_band", "gender", "variant_id")
# taste concentration tells which message suits a user; it does not predict whether they buy at all
CONVERSION_FEATURES = (*PROPENSITY_FEATURES, "top_category_share_90d", "category_concentration_90d")
CONVERSION_HOLDOUT_DAYS = 14
CONVERSION_PREFIX = "conversion_"
VARIANT_SEPARATOR = "__"  # model names: conversion_<campaign>__<variant>
ENGAGEMENT_MAX_ROUNDS = 300
EVAL_K = 10


@dataclass
class TrainedModel:
    name: str
    version: str
    objective: str
    trained_cutoff: str
    holdout_cutoff: str
    features: list[str]
    categories: dict[str, list[str]]
    params: dict[str, Any]
    best_iteration: int
    metrics: dict[str, Any]
    training_rows: int
    training_data_sha256: str
    path: str

    def booster(self) -> lgb.Booster:
        return lgb.Booster(model_file=self.path)


def lightgbm_params(settings: Settings, objective: str, **extra: Any) -> dict[str, Any]:
    """Parameters that make a fit reproducible: one seed, deterministic histograms, fixed threads."""
    return {
        "objective": objective,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": settings.warehouse.threads or 2,
        "verbosity": -1,
        **extra,
    }


class SensitiveFeatureError(ValueError):
    """A model was about to learn from a sensitive attribute the config does not allow."""


def user_model_features(base: tuple[str, ...], settings: Settings) -> tuple[str, ...]:
    """A user-level model's features: the base list and the company's declared attributes and SQL features
    (user_features in config), without any sensitive attribute, plus the sensitive attributes the config
    explicitly allows (privacy.sensitive_features)."""
    sensitive = set(settings.privacy.sensitive_attributes)
    declared = settings.user_features.feature_names
    candidates = (*base, *(name for name in declared if name not in base))
    kept = tuple(name for name in candidates if name not in sensitive)
    return (*kept, *(name for name in settings.privacy.sensitive_features if name not in kept))


def check_features(model_name: str, features: tuple[str, ...] | list[str], settings: Settings) -> None:
    """The last guard before fitting: no sensitive attribute reaches a model unless config names it."""
    allowed = set(settings.privacy.sensitive_features)
    leaked = [f for f in features if f in settings.privacy.sensitive_attributes and f not in allowed]
    if leaked:
        raise SensitiveFeatureError(
            f"model {model_name}: feature(s) {', '.join(leaked)} are sensitive attributes; name them in "
            "privacy.sensitive_features to use them"
        )


def vocabulary(frame: pl.DataFrame, features: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        name: sorted(v for v in frame[name].unique().to_list() if v is not None)
        for name in features
        # a declared categorical attribute (or a text column of the company's SQL features) is text
        if name in CATEGORICAL or frame.schema[name] == pl.String
    }


def feature_matrix(
    frame: pl.DataFrame, features: tuple[str, ...], categories: dict[str, list[str]]
) -> np.ndarray:
    """float32 matrix; a categorical becomes its index in the training vocabulary (unknown: missing)."""
    columns = []
    for name in features:
        if name in categories:
            codes = {value: float(i) for i, value in enumerate(categories[name])}
            columns.append(frame[name].replace_strict(codes, default=None, return_dtype=pl.Float32))
        else:
            columns.append(frame[name].cast(pl.Float32))
    return pl.DataFrame(columns).to_numpy().astype(np.float32, copy=False)


def data_hash(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def seeded_validation_users(users: pl.Series, share: float, seed: int) -> np.ndarray:
    """A boolean mask over rows: whether the row's user falls in the early-stopping share."""
    unique = users.unique().sort()
    chosen = np.random.default_rng(seed).random(unique.len()) < share
    picked = unique.filter(pl.Series(chosen))
    return users.is_in(picked.implode()).to_numpy()


def save_model(booster: lgb.Booster, run_dir: Path, name: str) -> tuple[str, str]:
    text = booster.model_to_string()
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = run_dir / "models" / f"{name}-{version}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return version, str(path)


def train_propensity(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, cuts: Cutoffs
) -> TrainedModel:
    config = settings.propensity
    train = pl.concat(
        [
            read_partition(con, "features/propensity_examples", cutoff, ("user_id",)).pl()
            for cutoff in cuts.propensity_train
        ]
    )
    holdout = read_partition(con, "features/propensity_examples", cuts.propensity_holdout, ("user_id",)).pl()
    if train.height == 0 or train["is_converted"].sum() == 0:
        raise ValueError(f"propensity: no converting user in the training windows at {cuts.propensity_train}")
    features = user_model_features(PROPENSITY_FEATURES, settings)
    check_features("propensity", features, settings)
    booster, params, categories, calibration, x, y = fit_binary(train, "is_converted", features, settings)
    names = list(features)
    scores = propensity_metrics(booster, holdout, categories, calibration, base_rate=float(y.mean()))
    scores["baselines"] = propensity_baselines(train, holdout)
    version, path = save_model(booster, ctx.run_dir, "propensity")
    return TrainedModel(
        name="propensity",
        version=version,
        objective=f"purchase within {config.horizon_days} days",
        trained_cutoff=cuts.propensity_train[0].isoformat(),
        holdout_cutoff=cuts.propensity_holdout.isoformat(),
        features=names,
        categories=categories,
        params=params | {"calibration": calibration},
        best_iteration=int(booster.best_iteration or booster.current_iteration()),
        metrics=scores,
        training_rows=train.height,
        training_data_sha256=data_hash(x, y),
        path=path,
    )


def baseline_raw_score(frame: pl.DataFrame, feature: str, sign: float) -> np.ndarray:
    """A simple score from one feature, on a log scale; a user never active ranks last."""
    values = frame[feature].cast(pl.Float64).to_numpy()
    filled = np.where(np.isnan(values), np.nanmax(values, initial=0.0) + 1 if sign < 0 else 0.0, values)
    return sign * np.log1p(np.clip(filled, 0, None))


def propensity_baselines(train: pl.DataFrame, holdout: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """Recency and frequency as propensity scores: each Platt-calibrated on the training windows (so it
    can serve as a probability) and measured on the same holdout as the model."""
    labels = holdout["is_converted"].to_numpy()
    result = {}
    for name, (feature, sign) in PROPENSITY_BASELINES.items():
        a, b = fit_platt(baseline_raw_score(train, feature, sign), train["is_converted"].to_numpy())
        raw = baseline_raw_score(holdout, feature, sign)
        result[name] = {
            "feature": feature,
            "sign": sign,
            "calibration": {"a": a, "b": b},
            "roc_auc": metrics.roc_auc(labels, raw),
            "log_loss": metrics.log_loss(labels, apply_platt(raw, {"a": a, "b": b})),
        }
    return result


def predict_propensity_baseline(frame: pl.DataFrame, baseline: dict[str, Any]) -> np.ndarray:
    return apply_platt(
        baseline_raw_score(frame, baseline["feature"], baseline["sign"]), baseline["calibration"]
    )


def fit_binary(
    train: pl.DataFrame,
    label: str,
    features: tuple[str, ...],
    settings: Settings,
    max_rounds: int | None = None,
    model_name: str = "propensity",
) -> tuple[lgb.Booster, dict[str, Any], dict[str, list[str]], dict[str, float], np.ndarray, np.ndarray]:
    """A calibrated LightGBM binary classifier: early-stopped on a seeded share of the users, then
    Platt-scaled on those users, so its probabilities can be taken at face value."""
    config = settings.propensity
    categories = vocabulary(train, features)
    x = feature_matrix(train, features, categories)
    y = train[label].to_numpy().astype(np.float32)
    is_valid = seeded_validation_users(train["user_id"], config.validation_share, settings.seed)
    params = lightgbm_params(
        settings,
        "binary",
        learning_rate=config.learning_rate,
        num_leaves=config.num_leaves,
        min_data_in_leaf=config.min_data_in_leaf,
        metric="binary_logloss",
    )
    names = list(features)
    categorical = [n for n in names if n in categories]
    fit = lgb.Dataset(x[~is_valid], y[~is_valid], feature_name=names, categorical_feature=categorical)
    valid = lgb.Dataset(x[is_valid], y[is_valid], reference=fit)
    rounds = min(config.n_estimators, max_rounds or config.n_estimators)
    with boosting_rounds(f"train {model_name}", rounds) as advance:
        booster = lgb.train(
            params,
            fit,
            num_boost_round=rounds,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(config.early_stopping_rounds, verbose=False), advance],
        )
    a, b = fit_platt(booster.predict(x[is_valid], raw_score=True), y[is_valid])
    return booster, params, categories, {"a": a, "b": b}, x, y


def train_engagement(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, cuts: Cutoffs
) -> TrainedModel:
    """P(the user engages with the item within the label window): unlike the ranker's per-user order, a
    probability that compares across users, which is what choosing an item's audience needs."""
    train = read_partition(con, "features/ranking_examples", cuts.ranking_train, ("user_id", "item_id")).pl()
    train = train.with_columns((pl.col("relevance") > 0).alias("is_engaged"))
    booster, params, _categories, calibration, x, y = fit_binary(
        train, "is_engaged", RANKING_FEATURES, settings, ENGAGEMENT_MAX_ROUNDS, "engagement"
    )
    holdout = read_partition(
        con, "features/ranking_examples", cuts.ranking_holdout, ("user_id", "item_id")
    ).pl()
    version, path = save_model(booster, ctx.run_dir, "engagement")
    return TrainedModel(
        name="engagement",
        version=version,
        objective=f"any engagement with the item within {settings.ranking.label_days} days",
        trained_cutoff=cuts.ranking_train.isoformat(),
        holdout_cutoff=cuts.ranking_holdout.isoformat(),
        features=list(RANKING_FEATURES),
        categories={},
        params=params | {"calibration": calibration},
        best_iteration=int(booster.best_iteration or booster.current_iteration()),
        metrics=engagement_metrics(booster, holdout, calibration, float(y.mean())),
        training_rows=train.height,
        training_data_sha256=data_hash(x, y),
        path=path,
    )


def engagement_metrics(
    booster: lgb.Booster, holdout: pl.DataFrame, calibration: dict[str, float], base_rate: float
) -> dict[str, Any]:
    labels = (holdout["relevance"] > 0).to_numpy()
    return scored_metrics(booster, holdout, RANKING_FEATURES, labels, {}, calibration, base_rate)


def conversion_model_name(campaign_id: str, variant_id: str) -> str:
    return f"{CONVERSION_PREFIX}{campaign_id}{VARIANT_SEPARATOR}{variant_id}"


def train_campaign_conversions(
    con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext, cuts: Cutoffs
) -> list[TrainedModel]:
    """Per campaign and variant: will a user who gets this variant convert? One model per variant (a
    "T-learner"): a single model with the variant as one feature among twenty learns who converts, but
    barely how the variants differ for a user, which is what choosing a variant needs. Fitted on earlier
    sends, measured on the sends of the last CONVERSION_HOLDOUT_DAYS (a time-based holdout)."""
    examples = read_partition(
        con, "features/campaign_click_examples", cuts.score, ("campaign_id", "sent_at", "user_id")
    ).pl()
    holdout_from = ctx.cutoff - timedelta(days=CONVERSION_HOLDOUT_DAYS)
    trained = []
    for (campaign_id, variant_id), rows in sorted(
        examples.partition_by("campaign_id", "variant_id", as_dict=True).items()
    ):
        train, holdout = (
            rows.filter(pl.col("sent_at") < holdout_from),
            rows.filter(pl.col("sent_at") >= holdout_from),
        )
        if train.height < 200 or holdout.height == 0 or train["is_converted"].n_unique() < 2:
            log.info(
                "conversion model for %s/%s skipped: too few sends before and after %s",
                campaign_id, variant_id, holdout_from,
            )  # fmt: skip
            continue
        name = conversion_model_name(str(campaign_id), str(variant_id))
        features = user_model_features(CONVERSION_FEATURES, settings)
        check_features(name, features, settings)
        booster, params, categories, calibration, x, y = fit_binary(
            train, "is_converted", features, settings, model_name=name
        )
        version, path = save_model(booster, ctx.run_dir, name)
        trained.append(
            TrainedModel(
                name=name,
                version=version,
                objective=f"conversion when sent variant {variant_id} of campaign {campaign_id}",
                trained_cutoff=holdout_from.isoformat(),
                holdout_cutoff=ctx.cutoff.isoformat(),
                features=list(features),
                categories=categories,
                params=params | {"calibration": calibration},
                best_iteration=int(booster.best_iteration or booster.current_iteration()),
                metrics=conversion_metrics(booster, holdout, categories, calibration, float(y.mean())),
                training_rows=train.height,
                training_data_sha256=data_hash(x, y),
                path=path,
            )
        )
    return trained


def conversion_metrics(
    booster: lgb.Booster,
    holdout: pl.DataFrame,
    categories: dict[str, list[str]],
    calibration: dict[str, float],
    base_rate: float,
) -> dict[str, Any]:
    labels = holdout["is_converted"].to_numpy()
    return scored_metrics(
        booster, holdout, tuple(booster.feature_name()), labels, categories, calibration, base_rate
    ) | {"holdout_sends": holdout.height}


def scored_metrics(
    booster: lgb.Booster,
    holdout: pl.DataFrame,
    features: tuple[str, ...],
    labels: np.ndarray,
    categories: dict[str, list[str]],
    calibration: dict[str, float],
    base_rate: float,
) -> dict[str, Any]:
    """A calibrated binary model's holdout metrics; the training base rate is kept, so the champion gate
    rescores an old model against the same baseline."""
    predicted = predict_propensity(booster, feature_matrix(holdout, features, categories), calibration)
    return binary_metrics(labels, predicted, base_rate) | {"training_positive_rate": base_rate}


def binary_metrics(labels: np.ndarray, predicted: np.ndarray, base_rate: float) -> dict[str, Any]:
    """Holdout metrics of calibrated probabilities, beside the training base rate given to everyone."""
    constant = np.full(labels.size, base_rate)
    return {
        "is_constant": bool(np.ptp(predicted) == 0) if predicted.size else True,
        "roc_auc": metrics.roc_auc(labels, predicted),
        "pr_auc": metrics.average_precision(labels, predicted),
        "log_loss": metrics.log_loss(labels, predicted),
        "brier": metrics.brier_score(labels, predicted),
        "holdout_positive_rate": float(labels.mean()) if labels.size else float("nan"),
        "calibration_table": calibration_table(labels, predicted),
        "roc_curve": metrics.roc_points(labels, predicted),
        "baseline": {
            "log_loss": metrics.log_loss(labels, constant),
            "brier": metrics.brier_score(labels, constant),
        },
    }


def propensity_metrics(
    booster: lgb.Booster,
    holdout: pl.DataFrame,
    categories: dict[str, list[str]],
    calibration: dict[str, float],
    base_rate: float,
) -> dict[str, Any]:
    """Holdout metrics of a calibrated propensity model, beside the training base rate for everyone."""
    labels = holdout["is_converted"].to_numpy()
    return scored_metrics(
        booster, holdout, tuple(booster.feature_name()), labels, categories, calibration, base_rate
    ) | {"holdout_users": holdout.height}


def predict_propensity(booster: lgb.Booster, matrix: np.ndarray, calibration: dict[str, float]) -> np.ndarray:
    return apply_platt(booster.predict(matrix, raw_score=True), calibration)


def group_sizes(users: pl.Series) -> np.ndarray:
    """Rows per user, for rows sorted by user (LightGBM's query groups)."""
    return users.rle().struct.field("len").to_numpy()


def new_to_user(examples: pl.DataFrame) -> pl.DataFrame:
    """The candidates the user never bought: what discovery ranks."""
    return examples.filter(pl.col("n_user_item_purchases") == 0)


def train_ranking(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    ctx: RunContext,
    cuts: Cutoffs,
    name: str = RANKING,
) -> TrainedModel:
    """The ranker over every candidate; or, as `discovery`, a ranker over the candidates new to their user
    only: where buying again dominates, one ranker spends its top places on repeats and learns little about
    which new product a customer will take to, which is what a discovery slot needs."""
    config = settings.ranking
    train = read_partition(con, "features/ranking_examples", cuts.ranking_train, ("user_id", "item_id")).pl()
    is_discovery = name == DISCOVERY
    booster, params, x, y, rows = fit_ranker(new_to_user(train) if is_discovery else train, settings)
    names = list(RANKING_FEATURES)
    scores = evaluate_ranking(con, booster, settings, cuts, new_only=is_discovery)
    version, path = save_model(booster, ctx.run_dir, name)
    objective = f"graded engagement within {config.label_days} days"
    return TrainedModel(
        name=name,
        version=version,
        objective=f"{objective}, with items new to the user" if is_discovery else objective,
        trained_cutoff=cuts.ranking_train.isoformat(),
        holdout_cutoff=cuts.ranking_holdout.isoformat(),
        features=names,
        categories={},
        params=params,
        best_iteration=int(booster.best_iteration or booster.current_iteration()),
        metrics=scores,
        training_rows=rows,
        training_data_sha256=data_hash(x, y),
        path=path,
    )


def fit_ranker(
    train: pl.DataFrame, settings: Settings
) -> tuple[lgb.Booster, dict[str, Any], np.ndarray, np.ndarray, int]:
    """LightGBM lambdarank on ranking examples (one query per user), early-stopped on a seeded tenth of
    the users; returns the booster, its parameters, the training matrix, labels and row count."""
    config = settings.ranking
    # a user with no relevant candidate teaches lambdarank nothing
    engaged = (
        train.group_by("user_id").agg(pl.col("relevance").max().alias("best")).filter(pl.col("best") > 0)
    )
    train = train.join(engaged.select("user_id"), on="user_id", how="semi").sort("user_id", "item_id")
    if train.height == 0:
        raise ValueError("ranking: no user engaged with a candidate in the label window")
    x = feature_matrix(train, RANKING_FEATURES, {})
    y = train["relevance"].to_numpy().astype(np.float32)
    is_valid = seeded_validation_users(train["user_id"], 0.1, settings.seed)
    params = lightgbm_params(
        settings,
        "lambdarank",
        learning_rate=config.learning_rate,
        num_leaves=config.num_leaves,
        min_data_in_leaf=config.min_data_in_leaf,
        metric="ndcg",
        eval_at=[EVAL_K],
        lambdarank_truncation_level=2 * EVAL_K,
    )
    names = list(RANKING_FEATURES)
    fit = lgb.Dataset(
        x[~is_valid], y[~is_valid], group=group_sizes(train["user_id"].filter(~is_valid)), feature_name=names
    )
    valid = lgb.Dataset(
        x[is_valid], y[is_valid], group=group_sizes(train["user_id"].filter(is_valid)), reference=fit
    )
    with boosting_rounds("train ranking", config.n_estimators) as advance:
        booster = lgb.train(
            params,
            fit,
            num_boost_round=config.n_estimators,
            valid_sets=[valid],
            callbacks=[lgb.early_stopping(20, verbose=False), advance],
        )
    return booster, params, x, y, train.height


def ranking_baseline_scores(frame: pl.DataFrame, name: str) -> pl.Series:
    """A baseline's order over a user's candidates, from the candidates' own features (higher first).
    buy_again: the items the user bought on the most days, the latest first on ties; items never bought
    score -inf and are left out of its list. buy_again_popularity: the same, then the most popular."""
    popularity = -frame["popularity_rank"].cast(pl.Float64)
    if name == "popularity":
        return popularity.alias(name)
    bought = frame["n_user_item_purchases"].cast(pl.Float64)
    recency = 1.0 / (2.0 + frame["days_since_user_item_purchase"].cast(pl.Float64).fill_null(1e6))
    own = pl.Series(np.where(bought.to_numpy() > 0, 1e9 + bought.to_numpy() + recency.to_numpy(), np.nan))
    if name == "buy_again":
        return own.fill_nan(float("-inf")).alias(name)
    if name == "buy_again_popularity":
        return own.fill_nan(None).fill_null(popularity).alias(name)
    raise ValueError(f"unknown ranking baseline {name!r}")


def baseline_top_k(scored: pl.DataFrame, column: str) -> pl.DataFrame:
    """Top-K of a baseline's scores; an item a baseline does not offer (-inf) is never listed."""
    offered = scored.filter(pl.col(column) > float("-inf"))
    return metrics.top_k_from_scores(offered, column, EVAL_K)


def evaluate_ranking(
    con: duckdb.DuckDBPyConnection,
    booster: lgb.Booster,
    settings: Settings,
    cuts: Cutoffs,
    new_only: bool = False,
) -> dict[str, Any]:
    """NDCG@10 and friends on the holdout window, beside the baselines (popularity, and where repeats are
    allowed buy-again and buy-again backfilled with popularity) on the same candidates. With `new_only`
    (discovery), only candidates and engagements with items the user never bought, beside popularity."""
    holdout = read_partition(
        con, "features/ranking_examples", cuts.ranking_holdout, ("user_id", "item_id")
    ).pl()
    repeats = load_repeats(con, cuts.run_date)
    excluded = excluded_event_types(settings, repeats)
    if new_only:
        holdout = new_to_user(holdout)
        excluded = sorted({*excluded, PURCHASE})
    truth = query(
        con,
        "features/ranking_truth",
        {
            "cutoff": cuts.ranking_holdout,
            "label_days": settings.ranking.label_days,
            "excluded_event_types": excluded,
        },
    ).pl()
    predictions = booster.predict(feature_matrix(holdout, RANKING_FEATURES, {}))
    scored = holdout.select("user_id", "item_id").with_columns(
        pl.Series("score", predictions),
        *(ranking_baseline_scores(holdout, name) for name in RANKING_BASELINES),
    )
    model = metrics.ranking_metrics(metrics.top_k_from_scores(scored, "score", EVAL_K), truth, EVAL_K)
    names = RANKING_BASELINES if repeats.is_allowed and not new_only else ("popularity",)
    baselines = {name: metrics.ranking_metrics(baseline_top_k(scored, name), truth, EVAL_K) for name in names}
    best = max(names, key=lambda name: (baselines[name]["ndcg_at_10"], names.index(name)))
    candidate_recall = truth.join(
        holdout.select("user_id", "item_id"), on=["user_id", "item_id"], how="semi"
    ).height
    live_items = scalar(
        con,
        "select count(*) from features.item_features where cutoff = $cutoff and is_live",
        {"cutoff": cuts.ranking_holdout},
    )
    top = metrics.top_k_from_scores(scored, "score", EVAL_K)
    return {
        **model,
        "catalogue_coverage": top["item_id"].n_unique() / max(int(live_items or 1), 1),
        "candidate_recall": candidate_recall / max(truth.height, 1),
        "is_constant": bool(np.ptp(predictions) == 0) if predictions.size else True,
        "baselines": baselines,
        "baseline": {"name": best, **baselines[best]},
    }


def ensure_registry(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists meta")
    con.execute(
        """
        create table if not exists meta.models (
            run_date date, model_name varchar, model_version varchar, trained_cutoff timestamp,
            holdout_cutoff timestamp, features varchar[], params json, metrics json, training_rows bigint,
            training_data_sha256 varchar, path varchar
        )
        """
    )
    for column, sql_type in (
        ("is_promoted", "boolean"),
        ("decision", "varchar"),
        ("model_json", "json"),
        ("serving_json", "json"),
    ):
        con.execute(f"alter table meta.models add column if not exists {column} {sql_type}")


def register(
    con: duckdb.DuckDBPyConnection,
    ctx: RunContext,
    model: TrainedModel,
    promoted: bool,
    decision: str,
    serving: dict[str, Any] | None = None,
) -> None:
    """One model's row of the registry; `serving` is what served tonight in its place (the model, the
    champion or a baseline; None: nothing), which a flow that does not train serves again."""
    con.execute(
        "delete from meta.models where run_date = $run_date and model_name = $name",
        {"run_date": ctx.run_date, "name": model.name},
    )
    con.execute(
        "insert into meta.models values ($run_date, $name, $version, $trained, $holdout, $features, $params, "
        "$metrics, $rows, $sha, $path, $promoted, $decision, $model_json, $serving_json)",
        {
            "run_date": ctx.run_date,
            "name": model.name,
            "version": model.version,
            "trained": model.trained_cutoff,
            "holdout": model.holdout_cutoff,
            "features": model.features,
            "params": json.dumps(model.params, sort_keys=True),
            "metrics": json.dumps(model.metrics, sort_keys=True),
            "rows": model.training_rows,
            "sha": model.training_data_sha256,
            "path": model.path,
            "promoted": promoted,
            "decision": decision,
            "model_json": json.dumps(asdict(model), sort_keys=True, default=str),
            "serving_json": json.dumps(serving or {"served_by": NOTHING}, sort_keys=True, default=str),
        },
    )


def gate_metric(name: str) -> str:
    """The holdout metric a model is judged by."""
    return "ndcg_at_10" if name in (RANKING, DISCOVERY) else "roc_auc"


def current_features(name: str, settings: Settings) -> list[str]:
    """The features a model trained today would use."""
    if name in (RANKING, DISCOVERY, "engagement"):
        return list(RANKING_FEATURES)
    return list(
        user_model_features(PROPENSITY_FEATURES if name == "propensity" else CONVERSION_FEATURES, settings)
    )


def current_champion(con: duckdb.DuckDBPyConnection, name: str, ctx: RunContext) -> dict[str, Any] | None:
    """The model promoted by the latest earlier run (a rerun of tonight never competes with itself)."""
    rows = con.execute(
        "select model_json from meta.models where model_name = $name and run_date < $run_date and is_promoted "
        "order by run_date desc limit 1",
        {"name": name, "run_date": ctx.run_date},
    ).fetchall()
    return json.loads(rows[0][0]) if rows else None


def rescore_champion(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    cuts: Cutoffs,
    champion: dict[str, Any],
    base_rate: float,
) -> dict[str, Any]:
    """The champion's metrics on tonight's holdout, the same one the challenger was measured on."""
    booster = lgb.Booster(model_file=champion["path"])
    if champion["name"] == "engagement":
        holdout = read_partition(
            con, "features/ranking_examples", cuts.ranking_holdout, ("user_id", "item_id")
        ).pl()
        return engagement_metrics(booster, holdout, champion["params"]["calibration"], base_rate)
    if champion["name"].startswith(CONVERSION_PREFIX):
        campaign_id, _, variant_id = (
            champion["name"].removeprefix(CONVERSION_PREFIX).partition(VARIANT_SEPARATOR)
        )
        examples = read_partition(
            con, "features/campaign_click_examples", cuts.score, ("campaign_id", "sent_at", "user_id")
        ).pl()
        holdout_from = datetime.fromisoformat(champion_holdout_start(cuts))
        holdout = examples.filter(
            (pl.col("campaign_id") == campaign_id)
            & (pl.col("variant_id") == variant_id)
            & (pl.col("sent_at") >= holdout_from)
        )
        return conversion_metrics(
            booster, holdout, champion["categories"], champion["params"]["calibration"], base_rate
        )
    if champion["name"] == "propensity":
        holdout = read_partition(
            con, "features/propensity_examples", cuts.propensity_holdout, ("user_id",)
        ).pl()
        return propensity_metrics(
            booster, holdout, champion["categories"], champion["params"]["calibration"], base_rate
        )
    return evaluate_ranking(con, booster, settings, cuts, new_only=champion["name"] == DISCOVERY)


def champion_holdout_start(cuts: Cutoffs) -> str:
    return (cuts.score - timedelta(days=CONVERSION_HOLDOUT_DAYS)).isoformat()


def champion_gate(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    ctx: RunContext,
    cuts: Cutoffs,
    challenger: TrainedModel,
) -> tuple[dict[str, Any], bool, str]:
    """(the model that scores tonight, whether the challenger was promoted, why)."""
    metric = gate_metric(challenger.name)
    new_value = challenger.metrics[metric]
    champion = current_champion(con, challenger.name, ctx)
    if champion is None:
        return asdict(challenger), True, f"first {challenger.name} model: promoted"
    if (
        champion["features"] != current_features(challenger.name, settings)
        or not Path(champion["path"]).exists()
    ):
        return asdict(challenger), True, f"champion {champion['version']} no longer usable: promoted"
    base_rate = float(challenger.metrics.get("training_positive_rate", 0.0) or 0.0)
    champion_metrics = rescore_champion(con, settings, cuts, champion, base_rate)
    old_value = champion_metrics[metric]
    tolerance = settings.registry.tolerance
    if new_value >= old_value - tolerance:
        return (
            asdict(challenger),
            True,
            (
                f"{metric} {new_value:.4f} against champion {champion['version']}'s {old_value:.4f} "
                f"(tolerance {human.setting(tolerance)}): promoted"
            ),
        )
    kept = champion | {"metrics": champion_metrics}
    return (
        kept,
        False,
        (
            f"{metric} {new_value:.4f} is worse than champion {champion['version']}'s {old_value:.4f} by more than "
            f"{human.setting(tolerance)}: the champion keeps scoring"
        ),
    )


def _beats(value: float, baseline: float, margin: float) -> bool:
    """Whether a metric beats a baseline's by the relative margin. An unmeasurable value never does; an
    unmeasurable baseline (a holdout with one class) cannot be beaten or lost to: the model keeps serving."""
    if not np.isfinite(baseline):
        return True
    return bool(np.isfinite(value)) and value > baseline * (1 + margin) and value > baseline


def baseline_verdict(
    name: str, serving: dict[str, Any], challenger_metrics: dict[str, Any], settings: Settings
) -> tuple[str | None, str | None]:
    """(what serves tonight: MODEL, 'baseline:<name>' or None for nothing, a warning in words or None).

    The ranker must beat the best of popularity, buy-again and buy-again + popularity on NDCG@10; the
    propensity model the better of recency and frequency on ROC AUC; a conversion model the constant rate
    (ROC AUC 0.5), which then serves in its place. A model whose predictions are all equal never serves. The baselines come from tonight's
    challenger: they are measured on the same holdout whichever model serves."""
    margin = settings.registry.baseline_margin
    scores = serving["metrics"]
    if name in (RANKING, DISCOVERY):
        best = challenger_metrics["baseline"]
        value, floor, label = scores["ndcg_at_10"], best["ndcg_at_10"], "NDCG@10"
        best_name = best["name"]
    elif name == "propensity":
        baselines = challenger_metrics["baselines"]
        best_name = max(baselines, key=lambda key: np.nan_to_num(baselines[key]["roc_auc"], nan=0.0))
        value, floor, label = scores["roc_auc"], baselines[best_name]["roc_auc"], "ROC AUC"
    elif name.startswith(CONVERSION_PREFIX):
        best_name, value, floor, label = CONSTANT_RATE, scores["roc_auc"], 0.5, "ROC AUC"
    else:
        # engagement: audiences need probabilities that compare across users, which no baseline gives
        best_name, value, floor, label = "", 1.0, 0.0, ""
    if scores.get("is_constant"):
        reason = f"{name}: the model's predictions are all equal (it learned nothing)"
    elif _beats(value, floor, margin):
        return MODEL, None
    else:
        against = f"a constant score's {floor:.2f}" if best_name == CONSTANT_RATE else f"{best_name}'s {floor:.4f}"
        reason = f"{name}: {label} {value:.4f} does not beat {against} (margin {human.share(margin)})"
    if best_name:
        return f"{BASELINE_PREFIX}{best_name}", f"{reason}: the {best_name} baseline serves instead"
    return None, f"{reason}: not served"


def beaten_baseline(name: str, scores: dict[str, Any], challenger_metrics: dict[str, Any]) -> str:
    """The baseline a serving model beat, in words for the decision (empty where there is none)."""
    if name in (RANKING, DISCOVERY):
        best = challenger_metrics["baseline"]
        return f" (NDCG@10 {scores['ndcg_at_10']:.4f}; best baseline, {best['name']}, {best['ndcg_at_10']:.4f})"
    if name == "propensity":
        baselines = challenger_metrics["baselines"]
        best = max(baselines, key=lambda key: np.nan_to_num(baselines[key]["roc_auc"], nan=0.0))
        return f" (ROC AUC {scores['roc_auc']:.4f}; best baseline, {best}, {baselines[best]['roc_auc']:.4f})"
    if name.startswith(CONVERSION_PREFIX):
        return f" (ROC AUC {scores['roc_auc']:.4f}; the constant rate's 0.5)"
    return ""


def served_by_label(model: dict[str, Any], name: str) -> str:
    """What the published rows say served them: the model's name, or the baseline that beat it (for
    discovery prefixed, so its popularity and the ranker's can be told apart)."""
    served_by = model.get("served_by", MODEL)
    if served_by == MODEL:
        return name
    return f"{name}:{served_by}" if name == DISCOVERY else served_by


def serving_entry(
    challenger: TrainedModel, model: dict[str, Any], promoted: bool, decision: str, settings: Settings
) -> tuple[dict[str, Any] | None, bool, str]:
    """The serving record for one trained model after both gates (champion, then baselines): the entry
    (None when nothing serves), whether the challenger counts as promoted, and the decision in words."""
    served_by, warning = baseline_verdict(challenger.name, model, challenger.metrics, settings)
    if served_by == MODEL:
        note = beaten_baseline(challenger.name, model["metrics"], challenger.metrics)
        return model | {"served_by": MODEL, "warning": None}, promoted, f"{decision}{note}"
    # a promoted challenger that then loses to its baseline is not promoted after all: say only that
    said = warning if promoted else f"{decision}; {warning}"
    if served_by is None:
        return None, False, said
    entry = model | {"served_by": served_by, "warning": warning}
    if challenger.name == "propensity":
        entry["baseline_serving"] = challenger.metrics["baselines"][served_by.removeprefix(BASELINE_PREFIX)]
    if challenger.name.startswith(CONVERSION_PREFIX):
        # everyone gets the training windows' conversion rate: no user is told apart from another
        entry["baseline_serving"] = {"constant": float(challenger.metrics["training_positive_rate"])}
    return entry, False, said


@task(name="train", cache_policy=NO_CACHE)
@reported("train")
def train_models(settings: Settings, ctx: RunContext) -> dict[str, dict[str, Any]]:
    """Fit, evaluate and register the propensity and ranking models; each scores tonight only if it is
    not worse than the current champion on tonight's holdout (within the configured tolerance). A night
    between trainings (registry.retrain_every_days) serves the models that serve now."""
    with connect(settings) as con:
        ensure_registry(con)
        trains, reason = planned_training(con, ctx)
    if not trains:
        log.info("no training tonight (%s): the models that serve now score", reason)
        return {name: model | {"trained": False} for name, model in serving_models.fn(settings, ctx).items()}
    cuts = cutoffs_for(settings, ctx)
    serving = {}
    with connect(settings) as con:
        # where customers buy again, a second ranker picks the new products (see train_ranking)
        discovery = (
            [train_ranking(con, settings, ctx, cuts, DISCOVERY)]
            if load_repeats(con, ctx.run_date).is_allowed
            else []
        )
        challengers = [
            train_propensity(con, settings, ctx, cuts),
            train_ranking(con, settings, ctx, cuts),
            *discovery,
            train_engagement(con, settings, ctx, cuts),
            *train_campaign_conversions(con, settings, ctx, cuts),
        ]
        for challenger in challengers:
            check_features(challenger.name, challenger.features, settings)
            model, promoted, decision = champion_gate(con, settings, ctx, cuts, challenger)
            entry, promoted, decision = serving_entry(challenger, model, promoted, decision, settings)
            register(con, ctx, challenger, promoted, decision, entry)
            if entry is None or entry["served_by"] != MODEL:
                log.warning("%s: %s", challenger.name, decision)
            else:
                log.info("%s: %s", challenger.name, decision)
            if entry is not None:
                serving[challenger.name] = entry | {
                    "decision": decision,
                    "challenger_version": challenger.version,
                }
        record_training(con, settings, ctx.run_date)
    return serving


@task(name="serving-models", cache_policy=NO_CACHE)
def serving_models(settings: Settings, ctx: RunContext) -> dict[str, dict[str, Any]]:
    """The models that scored the latest run up to this date, without training: what a flow that only
    analyses (the experiments flow run on its own) reads."""
    with connect(settings) as con:
        ensure_registry(con)
        # what served at the latest run: the promoted model, the champion, a baseline, or nothing (a model
        # that lost to its baseline or learned nothing is not brought back); rows from before serving_json
        # was kept fall back to the latest promoted model
        rows = con.execute(
            """
            with latest as (
                select model_name, serving_json, decision from meta.models where run_date <= $run_date
                qualify row_number() over (partition by model_name order by run_date desc) = 1
            ),
            promoted as (
                select model_name, model_json, decision from meta.models where run_date <= $run_date and is_promoted
                qualify row_number() over (partition by model_name order by run_date desc) = 1
            )
            select
                latest.model_name,
                coalesce(latest.serving_json, promoted.model_json),
                case when latest.serving_json is null then promoted.decision else latest.decision end
            from latest
            left join promoted using (model_name)
            order by latest.model_name
            """,
            {"run_date": ctx.run_date},
        ).fetchall()
    models = {}
    for name, model_json, decision in rows:
        model = json.loads(model_json) if model_json else {"served_by": NOTHING}
        if model.get("served_by", MODEL) == NOTHING:
            continue
        if model.get("served_by", MODEL) != MODEL or Path(model["path"]).exists():
            models[name] = model | {"decision": decision, "challenger_version": model["version"]}
    return models
