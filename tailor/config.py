"""Typed configuration: YAML in `config/`, validated by pydantic before any work starts.

Relative paths in a config file are relative to that file's folder. Secrets never live here: S3
credentials come from the standard AWS chain, the pseudonymisation key from an environment variable.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import types
from collections.abc import Mapping, Sequence
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from tailor.schema import CONSENT_PURPOSES, DATASET_NAMES, EVENT_TYPES, TABLES

REQUIRED_SOURCES = ("users", "consents", "items", "interactions")
# The parameters extract binds into a source's SQL besides its inputs: an input may not take their names.
RESERVED_PARAMETERS = (
    "file", "path", "source_file", "file_date", "run_date", "first_key", "uri", "true_spellings",
    "false_spellings", "unusual", "timestamp_format", "delimiter", "header", "encoding", "names",
)  # fmt: skip
_PARAMETER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
CHANNEL_CONSENT = {"email": "marketing_email", "push": "marketing_push", "web": "profiling"}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvOptions(StrictModel):
    delimiter: str = Field(",", description="field separator")
    header: bool = Field(True, description="the first line holds column names")
    column_names: list[str] | None = Field(None, description="names for a file without a header line")
    encoding: Literal["utf-8", "latin-1", "utf-16"] = "utf-8"
    timestamp_format: str | None = Field(None, description="strptime format if not ISO 8601")


class SourceConfig(StrictModel):
    path: str = Field(description="local glob (relative to the config file) or s3://bucket/prefix/glob")
    format: Literal["csv", "parquet", "jsonl"] | None = Field(None, description="default: from extension")
    columns: dict[str, str] = Field(
        default_factory=dict, description="canonical column -> column in the file; unnamed ones map to same"
    )
    sql: str | None = Field(
        None,
        description="SQL mapping the files onto the table, reading the driving file as $file: a .sql file "
        "relative to the config file (sql/interactions.sql), or a bare name (movielens_users) for one of "
        "Tailor's own sql/sources/",
    )
    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="more files the SQL reads: name -> local glob (relative to the config) or s3:// glob; "
        "the SQL sees $<name>, the list of the matching files",
    )
    csv: CsvOptions = Field(default_factory=CsvOptions)

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, inputs: dict[str, str]) -> dict[str, str]:
        for name in inputs:
            if not _PARAMETER_NAME.match(name):
                raise ValueError(f"input name {name!r} must be a lowercase identifier such as orders")
            if name in RESERVED_PARAMETERS:
                # extract binds these itself beside the inputs: a clash would silently replace one
                raise ValueError(f"input name {name!r} is taken; not one of {', '.join(RESERVED_PARAMETERS)}")
        return inputs

    @model_validator(mode="after")
    def _inputs_need_sql(self) -> SourceConfig:
        if self.inputs and not self.sql:
            raise ValueError("inputs are read by the source's own SQL: set sql as well")
        return self

    @property
    def builtin_sql(self) -> bool:
        """A bare name (no folder, no .sql) names one of Tailor's own sql/sources/ files."""
        return self.sql is not None and "/" not in self.sql and not self.sql.endswith(".sql")

    def file_format(self) -> str:
        if self.format is not None:
            return self.format
        for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl")):
            if self.path.endswith(suffix):
                return fmt
        return "csv"


class WarehouseConfig(StrictModel):
    path: str = Field("var/tailor.duckdb", description="the DuckDB file")
    runs_dir: str = Field("var/runs", description="local working folder of each run")
    threads: int | None = Field(None, ge=1, description="DuckDB threads (default: all cores)")
    memory_limit: str | None = Field(None, description="DuckDB memory limit such as '4GB'")


class StorageConfig(StrictModel):
    endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint; default AWS_ENDPOINT_URL or AWS itself"
    )
    region: str = "us-east-1"
    max_attempts: int = Field(5, ge=1, le=20, description="botocore retry attempts per request")


class BrazeFeedConfig(StrictModel):
    """When a user's payload has changed enough to be sent to Braze again. Every night retrains the models,
    so most recommendation lists and many deciles move a little; sending each small move resends nearly
    everyone (Braze bills each changed attribute). Tonight's payload is compared with the one Braze holds,
    so small moves never add up to a large drift."""

    recommendations_changed_share: float = Field(
        0.3,
        ge=0,
        le=1,
        description="resend a user's recommended items when more than this share of the list Braze holds is "
        "gone from tonight's (0: on any change of the items; a new order alone is never sent). A held item that "
        "can no longer be recommended (bought, no longer live, out of the user's candidates) always resends",
    )
    decile_min_move: int = Field(
        2,
        ge=1,
        le=9,
        description="resend a user's propensity decile when it moved by at least this much (1: on any move)",
    )


class PublishConfig(StrictModel):
    target: str = Field(description="file://DIR or s3://BUCKET/PREFIX")
    rows_per_file: int = Field(1_000_000, ge=1000)
    csv_datasets: list[str] = Field(
        default_factory=lambda: ["recommendations", "content"],
        description="datasets also written as CSV for campaign systems",
    )
    jsonl_datasets: list[str] = Field(
        default_factory=lambda: ["content", "personalize_batch", "personalize_segments", "user_updates"],
        description="datasets also written as JSON lines",
    )
    published_user_id: Literal["pseudonymous", "external"] = Field(
        "pseudonymous",
        description="pseudonymous: keyed hash of user_id (key from pseudonym_key_env); external: raw user_id",
    )
    pseudonym_key_env: str = "TAILOR_PSEUDONYM_KEY"
    external_id_datasets: list[str] = Field(
        default_factory=list,
        description="datasets a campaign system must match on the real id (e.g. user_updates for Braze's "
        "EXTERNAL_ID): published with the raw user_id while every other dataset stays pseudonymous",
    )
    keep_superseded_attempts_hours: float = Field(
        24,
        ge=0,
        description="how long a published attempt stays after a republish of its date replaced it, so a "
        "reader that followed the old pointer can finish; a later publish then removes it",
    )
    tables: bool = Field(
        True,
        description="also write every dataset as a Delta Lake table partitioned by run date under "
        "PREFIX/tables/<dataset>/, with its JSON schema and Athena/Trino DDL, for BI (docs/tables.md)",
    )
    braze: BrazeFeedConfig = Field(
        default_factory=BrazeFeedConfig,
        description="how much a user's payload must change to be sent to Braze again (user_updates)",
    )
    compression: Literal["none", "gzip"] = Field(
        "none",
        description="CSV and JSON lines files as they are, or gzip-compressed (.csv.gz, .jsonl.gz): campaign "
        "systems take either, and gzip cuts upload time; Parquet compresses inside the file either way",
    )

    @field_validator("csv_datasets", "jsonl_datasets", "external_id_datasets")
    @classmethod
    def _known_datasets(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in DATASET_NAMES]
        if unknown:
            raise ValueError(
                f"unknown dataset(s) {', '.join(unknown)}; the datasets are {', '.join(DATASET_NAMES)}"
            )
        return names

    @field_validator("target")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("file://", "s3://")):
            raise ValueError("must start with file:// or s3://")
        return value


class PropensityConfig(StrictModel):
    horizon_days: int = Field(7, ge=1, le=90, description="target: purchases within this many days")
    training_windows: int = Field(3, ge=1, le=12, description="consecutive past windows stacked for training")
    n_estimators: int = Field(600, ge=1, description="upper bound; early stopping picks the number")
    learning_rate: float = Field(0.03, gt=0, le=1)
    num_leaves: int = Field(7, ge=2)
    min_data_in_leaf: int = Field(200, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    validation_share: float = Field(0.2, gt=0, lt=1, description="users held out for early stopping")


class RankingConfig(StrictModel):
    label_days: int = Field(7, ge=1, le=90, description="interactions in this window are the relevance")
    popular_candidates: int = Field(50, ge=1, description="most popular items offered to everyone")
    category_candidates: int = Field(20, ge=1, description="popular items from each top category")
    top_categories: int = Field(3, ge=1, description="how many of the user's categories feed candidates")
    similar_candidates: int = Field(30, ge=0, description="items co-occurring with the user's recent items")
    new_candidates: int = Field(10, ge=0, description="most popular of the recently published items")
    new_item_days: int = Field(14, ge=1, description="an item published this recently counts as new")
    recent_items: int = Field(20, ge=1, description="a user's recent items that seed co-occurrence")
    neighbours: int = Field(30, ge=1, description="most similar items kept per item")
    cooccurrence_max_users: int = Field(
        200_000,
        ge=1000,
        description="beyond this many users, item similarity is estimated on a seeded sample",
    )
    history_days: int = Field(
        90, ge=1, description="history window for affinity, recent items, co-occurrence"
    )
    excluded_event_types: list[str] = Field(
        default_factory=lambda: ["purchase"],
        description="an item with such an event is never recommended again ('purchase' is governed by "
        "repeat_purchases)",
    )
    repeat_purchases: Literal["auto", "allow", "exclude"] = Field(
        "auto",
        description="may a user be recommended what they bought before? auto: yes when at least "
        "repeat_share_threshold of recent purchases are repeats (groceries, supplies), no otherwise",
    )
    repeat_share_threshold: float = Field(
        0.2,
        ge=0,
        le=1,
        description="auto: the share of purchases that are repeats from which repeats are allowed",
    )
    buy_again_candidates: int = Field(
        30,
        ge=0,
        description="the user's most often bought items offered as candidates (when repeats allowed)",
    )
    repeat_history_days: int = Field(
        365, ge=1, description="window for a user's purchase history of an item and repurchase intervals"
    )
    recent_days: int = Field(
        30, ge=1, description="items the user interacted with this recently are candidates"
    )
    popularity_days: int = Field(14, ge=1, description="window for item popularity")
    affinity_half_life_days: float = Field(14.0, gt=0)
    max_training_users: int = Field(10_000, ge=100, description="users sampled for a training window")
    n_estimators: int = Field(150, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2)
    min_data_in_leaf: int = Field(50, ge=1)


class RegistryConfig(StrictModel):
    tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="a new model may score this much below the champion and still replace it",
    )
    baseline_margin: float = Field(
        0.0,
        ge=0,
        le=1,
        description="a model serves only if its holdout metric beats the best simple baseline's by this "
        "relative margin (0.02: 2% better); otherwise the baseline serves",
    )
    retrain_every_days: int = Field(
        1,
        ge=1,
        le=90,
        description="train the models every this many nights (7: weekly); the nights between score with the "
        "models that serve now and skip the training cutoffs' features. A change to the model settings, the "
        "code or the repeat-purchase decision, or a missing model file, retrains the next night",
    )


class ExclusionConfig(StrictModel):
    """Items that may never be recommended (fuel, gift cards, deposits, carrier bags): an item meeting any
    rule is not live, so no candidate, recommendation, fallback or audience offers it. Rules are checked in
    the order of the fields; the run report counts the items each one excludes."""

    categories: list[str] = Field(
        default_factory=list, description="categories never recommended (compared trimmed, case-insensitive)"
    )
    departments: list[str] = Field(
        default_factory=list, description="departments never recommended (compared trimmed, case-insensitive)"
    )
    item_id_patterns: list[str] = Field(
        default_factory=list,
        description="SQL LIKE patterns on item_id, case-insensitive: % is any run of characters, _ any one "
        "character, a backslash makes either literal (e.g. 'GIFT%', 'FUEL\\_%')",
    )
    min_price_cents: int | None = Field(
        None, ge=0, description="items priced below this are never recommended (an unknown price passes)"
    )
    max_price_cents: int | None = Field(
        None, ge=0, description="items priced above this are never recommended (an unknown price passes)"
    )
    exclude_unavailable: bool = Field(
        True, description="items whose is_available is false are not recommended (expired ones never are)"
    )

    @field_validator("categories", "departments")
    @classmethod
    def _normalized(cls, names: list[str]) -> list[str]:
        # staging lower-cases and trims both columns: the rule must be spelled the same way to match
        cleaned = [name.strip().lower() for name in names]
        if any(not name for name in cleaned):
            raise ValueError("an empty name matches nothing; remove it")
        return cleaned

    @field_validator("item_id_patterns")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if not pattern:
                raise ValueError("an empty pattern matches nothing; remove it")
            trailing = len(pattern) - len(pattern.rstrip("\\"))
            if trailing % 2:
                # DuckDB refuses a LIKE pattern that ends in its escape character, at run time
                raise ValueError(f"pattern {pattern!r} ends with a lone backslash (it escapes nothing)")
        return patterns

    @model_validator(mode="after")
    def _price_range(self) -> ExclusionConfig:
        low, high = self.min_price_cents, self.max_price_cents
        if low is not None and high is not None and high < low:
            raise ValueError("max_price_cents must not be below min_price_cents")
        return self

    def sql_params(self) -> dict[str, Any]:
        """The rules as the parameters sql/staging/stg_items.sql binds."""
        return {
            "exclude_categories": self.categories,
            "exclude_departments": self.departments,
            "exclude_item_id_patterns": self.item_id_patterns,
            "exclude_min_price_cents": self.min_price_cents,
            "exclude_max_price_cents": self.max_price_cents,
            "exclude_unavailable": self.exclude_unavailable,
        }

    def rules(self) -> list[tuple[str, str]]:
        """(rule name as staging's excluded_by spells it, its setting in words) for each rule in force."""
        rules = []
        for name in ("categories", "departments", "item_id_patterns"):
            values = getattr(self, name)
            if values:
                rules.append((name, ", ".join(values)))
        if self.min_price_cents is not None:
            rules.append(("min_price_cents", f"price below {self.min_price_cents:,} cents"))
        if self.max_price_cents is not None:
            rules.append(("max_price_cents", f"price above {self.max_price_cents:,} cents"))
        if self.exclude_unavailable:
            rules.append(("exclude_unavailable", "marked unavailable"))
        return rules


class RecommendationsConfig(StrictModel):
    k: int = Field(10, ge=1, le=200, description="items per user")
    requires_consent: Literal["profiling"] = Field(
        "profiling", description="the purpose personalized (model-ranked) recommendations need"
    )
    channels: list[Literal["email", "push", "web"]] = Field(
        default_factory=lambda: ["email", "push", "web"],
        description="a user gets recommendations for each of these channels they consented to",
    )
    max_per_category: int | None = Field(
        3, ge=1, description="diversity: at most this many items per category"
    )
    new_item_boost: float = Field(
        0.0, ge=0, description="added to the ranker's score of items published within ranking.new_item_days"
    )
    min_history_events: int = Field(
        3, ge=0, description="users with fewer events in the history window get the popular fallback"
    )
    fallback_days: int = Field(14, ge=1, description="window for the popular-in-country fallback")
    exclude: ExclusionConfig = Field(
        default_factory=ExclusionConfig, description="items that may never be recommended"
    )


class RfmRule(StrictModel):
    """A user falls in the first rule whose every stated condition holds; unstated conditions always hold."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    max_days_since_signup: int | None = Field(None, ge=0)
    max_days_since_purchase: float | None = Field(None, ge=0)
    min_days_since_purchase: float | None = Field(None, ge=0)
    max_days_since_activity: float | None = Field(None, ge=0)
    min_purchases_90d: int | None = Field(None, ge=0)


def _default_rfm_rules() -> list[RfmRule]:
    return [
        RfmRule(name="new", max_days_since_signup=30),
        RfmRule(name="loyal", max_days_since_purchase=30, min_purchases_90d=3),
        RfmRule(name="active", max_days_since_activity=30),
        RfmRule(name="at_risk", max_days_since_activity=90),
        RfmRule(name="lapsed"),
    ]


class SegmentsConfig(StrictModel):
    rfm_rules: list[RfmRule] = Field(default_factory=_default_rfm_rules, min_length=1)
    clusters_min: int = Field(3, ge=2, description="fewest behavioural clusters to try")
    clusters_max: int = Field(8, ge=2, description="most behavioural clusters to try")
    cluster_sample_users: int = Field(
        20_000, ge=500, description="users the clustering is fitted and scored (silhouette) on"
    )

    @model_validator(mode="after")
    def _checks(self) -> SegmentsConfig:
        names = [rule.name for rule in self.rfm_rules]
        if len(set(names)) != len(names):
            raise ValueError("rfm_rules names must be unique")
        if self.clusters_max < self.clusters_min:
            raise ValueError("clusters_max must not be below clusters_min")
        return self


class ItemAudiencesConfig(StrictModel):
    """Personalize-style batch segments: for each listed item or category, the users most likely to engage."""

    items: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    top_n: int = Field(1000, ge=1, description="users per item or category")
    items_per_category: int = Field(
        5, ge=1, description="a category is scored on its most popular live items"
    )


class VariantConfig(StrictModel):
    variant_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    status: Literal["approved", "draft"] = Field(
        "approved", description="a draft is never allocated until a person sets it to approved"
    )
    weight: float = Field(1.0, gt=0, description="share under the split policy, relative to the others")
    subject: str = Field("", description="Jinja2 template (email subject, push title)")
    headline: str = ""
    body: str = Field("", description="HTML-escaped for email")
    call_to_action: str = ""
    written_for_segment: str | None = Field(None, description="drafts: the segment the copy was written for")
    drafted_by: str | None = Field(None, description="drafts: the language model that proposed it")


class AudienceConfig(StrictModel):
    segments: list[str] = Field(
        default_factory=list, description="RFM segment names; empty: every consented user"
    )
    consent_purpose: str | None = Field(
        None, description="a purpose required besides the channel's own marketing consent"
    )


class AllocationConfig(StrictModel):
    policy: Literal["split", "bandit", "personalized", "contextual_bandit"] = "split"
    exploration_share: float = Field(
        0.1, ge=0, le=1, description="personalized: users given a uniformly random variant"
    )
    lookback_days: int = Field(90, ge=1, description="bandit: sends in this window count as evidence")
    prior_successes: float = Field(1.0, gt=0, description="bandit: Beta prior alpha")
    prior_failures: float = Field(1.0, gt=0, description="bandit: Beta prior beta")
    skip_without_uplift: bool = Field(
        False,
        description="personalized: do not contact a user whose best variant's predicted uplift over no "
        "contact is at most min_uplift (needs the campaign's no-contact model)",
    )
    min_uplift: float = Field(0.0, ge=-1, le=1, description="personalized: see skip_without_uplift")
    context: Literal["segment", "country", "language"] = Field(
        "segment",
        description="contextual_bandit: the user attribute its posteriors are kept per value of (segment: the "
        "user's RFM segment from marts.segments)",
    )
    context_prior_sends: float = Field(
        100.0,
        gt=0,
        description="contextual_bandit: how many sends the pooled posterior counts for in each context's prior; "
        "a context with fewer sends of its own stays close to the whole audience's rates",
    )
    contextual_tolerance: float = Field(
        0.005,
        ge=0,
        le=1,
        description="contextual_bandit: it serves only when tonight's policy evaluation puts the lower bound of "
        "its conversion rate per send minus the context-free bandit's (self-normalised IPW, paired bootstrap) "
        "above minus this; otherwise the context-free bandit serves",
    )


class CampaignConfig(StrictModel):
    campaign_id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    channel: Literal["email", "push", "web"]
    audience: AudienceConfig = Field(default_factory=AudienceConfig)
    holdout_share: float = Field(0.1, ge=0, lt=1)
    salt: str = Field("", description="change it to reshuffle assignment and holdout")
    allocation: AllocationConfig = Field(default_factory=AllocationConfig)
    active_from: date | None = None
    active_until: date | None = None
    control_variant: str | None = Field(
        None, description="the variant experiments measure the others against; default: the holdout"
    )
    primary_metric: str = Field(
        "conversion_rate",
        pattern=r"^[a-z][a-z0-9_]*$",
        description="the experiment metric a variant ships on, from experiments.metrics",
    )
    guardrails: list[str] | None = Field(
        None,
        description="metrics of experiments.metrics a variant must not significantly worsen; default: every "
        "other metric of the catalogue that can be tested against the control (a metric that needs the "
        "message is left out when the control is the holdout). Metrics neither primary nor guardrail are "
        "not computed",
    )
    variants: list[VariantConfig] = Field(min_length=1)
    # filled in by load_settings: the file the campaign came from
    source_file: Annotated[str, Field(exclude=True)] = ""

    @property
    def required_consents(self) -> list[str]:
        """The channel's marketing consent, plus the audience's purpose when it names another one: a
        campaign never reaches anyone on a channel they did not consent to."""
        purposes = [CHANNEL_CONSENT[self.channel]]
        extra = self.audience.consent_purpose
        return purposes if extra is None or extra in purposes else [*purposes, extra]

    @property
    def approved_variants(self) -> list[VariantConfig]:
        return [variant for variant in self.variants if variant.status == "approved"]

    @field_validator("guardrails")
    @classmethod
    def _distinct_guardrails(cls, names: list[str] | None, info: ValidationInfo) -> list[str] | None:
        # whether the metrics are in the catalogue is checked with the settings (check_campaign_metrics)
        if names is None:
            return None
        if len(set(names)) != len(names):
            raise ValueError("name each metric once")
        primary = info.data.get("primary_metric")
        if primary in names:
            raise ValueError(f"{primary!r} is the primary_metric already")
        return names

    @model_validator(mode="after")
    def _checks(self) -> CampaignConfig:
        purpose = self.audience.consent_purpose
        if purpose is not None and purpose not in CONSENT_PURPOSES:
            raise ValueError(f"audience.consent_purpose must be one of {', '.join(CONSENT_PURPOSES)}")
        ids = [variant.variant_id for variant in self.variants]
        if len(set(ids)) != len(ids) or "holdout" in ids:
            raise ValueError("variant_id values must be unique and not 'holdout'")
        if any("__" in name for name in [self.campaign_id, *ids]):
            # model names join campaign and variant with "__"
            raise ValueError("campaign_id and variant_id values must not contain '__'")
        if self.control_variant is not None and self.control_variant not in ids:
            raise ValueError(f"control_variant {self.control_variant!r} is not one of the variants")
        return self

    def is_active(self, run_date: date) -> bool:
        starts_ok = self.active_from is None or self.active_from <= run_date
        ends_ok = self.active_until is None or run_date <= self.active_until
        return starts_ok and ends_ok and bool(self.approved_variants)


def _default_channel_limits() -> dict[str, dict[str, int]]:
    # subject lines past ~150 characters are cut by mail clients; push titles and texts by the OS
    return {
        "email": {"subject": 150, "headline": 200, "call_to_action": 40},
        "push": {"subject": 65, "headline": 178, "body": 178, "call_to_action": 30},
        "web": {"subject": 120, "headline": 120, "call_to_action": 40},
    }


class DraftingConfig(StrictModel):
    """An OpenAI-compatible chat-completions endpoint that proposes draft copy for marketers."""

    base_url: str = Field("https://api.openai.com/v1", description="the endpoint's /v1 base URL")
    model: str = "gpt-4o-mini"
    api_key_env: str = Field("TAILOR_LLM_API_KEY", description="environment variable holding the key")
    timeout_seconds: float = Field(30.0, gt=0)
    candidates: int = Field(3, ge=1, le=20, description="subjects and headlines proposed per segment")


# The columns of sql/marts/experiment_units.sql that describe a unit's behaviour in the
# experiments.covariate_days before its send: what a covariate expression may read besides users attributes.
BEHAVIOUR_COLUMNS = ("events_before", "purchases_before", "purchase_value_before", "clicks_before")
# Functions a covariate expression may call (evaluated by Polars' SQL, over the unit's columns only).
COVARIATE_FUNCTIONS = ("ln", "log10", "sqrt", "abs", "exp", "power", "least", "greatest", "coalesce")
_METRIC_NAME = r"^[a-z][a-z0-9_]*$"
_COVARIATE_TOKEN = re.compile(
    r"\s+|(?P<number>\d+(?:\.\d+)?)|(?P<name>[a-z_][a-z0-9_]*)|(?P<operator>[-+*/(),])"
)
# What an experiment unit's row holds besides attributes: an attribute may not take one of these names.
UNIT_COLUMNS = ("variant_id", "user_id", "sent_at", "is_converted", "is_clicked", "revenue_cents")


def covariate_names(expression: str) -> list[str]:
    """The column names a covariate expression reads, in order; ValueError for anything but numbers,
    + - * / ( ) , the functions of COVARIATE_FUNCTIONS and lowercase column names. The expression is
    evaluated over the unit's own columns only, so this keeps it to arithmetic on them."""
    names, position = [], 0
    while position < len(expression):
        token = _COVARIATE_TOKEN.match(expression, position)
        if token is None:
            raise ValueError(
                f"covariate {expression!r}: unexpected {expression[position]!r} at character {position + 1}; "
                "an expression may hold numbers, + - * / ( ), column names and "
                + ", ".join(COVARIATE_FUNCTIONS)
            )
        name = token.group("name")
        if name is not None:
            follows_call = expression[token.end() :].lstrip().startswith("(")
            if name in COVARIATE_FUNCTIONS and not follows_call:
                raise ValueError(f"covariate {expression!r}: {name} is a function, call it as {name}(...)")
            if name not in COVARIATE_FUNCTIONS:
                if follows_call:
                    raise ValueError(
                        f"covariate {expression!r}: {name}() is not one of {', '.join(COVARIATE_FUNCTIONS)}"
                    )
                names.append(name)
        position = token.end()
    if not expression.strip():
        raise ValueError("covariate: an empty expression; use none for no covariate")
    return names


class MetricConfig(StrictModel):
    """One experiment metric: an outcome of each unit (a user's first send of the campaign), defined by the
    exposures (Tailor's conversion_rate, click_rate and revenue_per_user), by events within a window after
    the send, or by a SQL file."""

    exposure_outcome: Literal["is_converted", "is_clicked", "revenue_cents"] | None = Field(
        None,
        description="an outcome the campaign exposures report once their attribution closed (the built-in "
        "conversion_rate, click_rate and revenue_per_user)",
    )
    event_type: list[str] = Field(
        default_factory=list,
        description="event-based: the user's events of these types (one of the canonical event types, or a "
        "list) from the send to window_days after it",
    )
    window_days: int | None = Field(
        None,
        ge=1,
        le=365,
        description="days after the send the outcome counts (default 7 for an event-based metric); a unit "
        "whose window has not closed by the cutoff is not yet measured on the metric",
    )
    aggregate: Literal["any", "count", "sum"] = Field(
        "any", description="event-based: any such event (binary), their count, or the sum of `sum_of`"
    )
    sum_of: Literal["value", "quantity"] = Field(
        "value", description="aggregate sum: of the events' value or quantity"
    )
    sql: str | None = Field(
        None,
        description="a .sql file (relative to the config file) returning one row per unit: user_id, sent_at, "
        "value and optionally value_before (its pre-period covariate); it may read $campaign_id, "
        "$window_start, $cutoff and $cutoff_day. Units it returns no row for count 0",
    )
    kind: Literal["binary", "continuous"] | None = Field(
        None,
        description="binary (0/1 per unit: the two-proportion test) or continuous (Welch's test); default "
        "binary for aggregate any, continuous otherwise; an SQL metric must say",
    )
    higher_is_better: bool = Field(True, description="the metric's good direction is up")
    needs_message: bool = Field(
        False,
        description="only a user who was sent the message can move it (a click): not tested against the holdout",
    )
    covariate: str | None = Field(
        None,
        description="CUPED's covariate: pre_period (the same metric over the same window before the send; "
        "an SQL metric's value_before), none, a numeric users attribute (user_features.attributes), or an "
        "expression over the unit's behaviour before the send ("
        + ", ".join(BEHAVIOUR_COLUMNS)
        + ") and attributes. Default: pre_period; events_before for the exposure outcomes, which have no "
        "pre-period",
    )
    unit: str | None = Field(
        None,
        description="how a continuous metric's difference reads (cents, units, events); a rate reads in points",
    )

    @field_validator("event_type", mode="before")
    @classmethod
    def _one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _checks(self) -> MetricConfig:
        defined = [bool(self.exposure_outcome), bool(self.event_type), self.sql is not None]
        if sum(defined) != 1:
            raise ValueError("a metric is defined by exactly one of event_type, sql or exposure_outcome")
        unknown = [name for name in self.event_type if name not in EVENT_TYPES]
        if unknown:
            raise ValueError(f"event_type {', '.join(unknown)} is not one of {', '.join(EVENT_TYPES)}")
        if self.event_type and self.kind == "binary" and self.aggregate != "any":
            raise ValueError(f"kind binary needs aggregate any (a {self.aggregate} is not 0 or 1)")
        if self.event_type and self.kind == "continuous" and self.aggregate == "any":
            raise ValueError("aggregate any is binary: set kind binary, or aggregate count or sum")
        if self.sql is not None and self.kind is None:
            raise ValueError("an SQL metric must say its kind: binary or continuous")
        if self.sql is not None and not self.sql.endswith(".sql"):
            raise ValueError("sql names a .sql file relative to the config file")
        if self.exposure_outcome and self.covariate == "pre_period":
            raise ValueError(
                "an exposure outcome has no pre-period (it exists only after the send): use a behaviour "
                "column, a users attribute, an expression or none"
            )
        if self.covariate not in (None, "pre_period", "none"):
            covariate_names(self.covariate)
        return self

    @property
    def metric_kind(self) -> Literal["binary", "continuous"]:
        if self.kind is not None:
            return self.kind
        if self.exposure_outcome:
            return "continuous" if self.exposure_outcome == "revenue_cents" else "binary"
        return "binary" if self.aggregate == "any" else "continuous"

    @property
    def covariate_choice(self) -> str:
        """pre_period, none, or an expression (a bare column name is one) over the unit's columns."""
        if self.covariate is not None:
            return self.covariate
        return "events_before" if self.exposure_outcome else "pre_period"

    @property
    def outcome_window_days(self) -> int | None:
        """The window an event metric counts over (7 days unless set); an SQL metric's own, if any."""
        return self.window_days or (7 if self.event_type else None)

    @property
    def attributes(self) -> list[str]:
        """The users attribute columns the covariate reads."""
        if self.covariate_choice in ("pre_period", "none"):
            return []
        return [name for name in covariate_names(self.covariate_choice) if name not in BEHAVIOUR_COLUMNS]


# How active a user was before the send (all events in experiments.covariate_days) correlates more with the
# exposure outcomes than their own history (few users have past purchases or clicks): on generated data 0.15
# against 0.10 for conversion, 0.08 against 0.04 for revenue. So it is their covariate by default.
BUILTIN_METRICS: dict[str, MetricConfig] = {
    "conversion_rate": MetricConfig(exposure_outcome="is_converted"),
    "click_rate": MetricConfig(exposure_outcome="is_clicked", needs_message=True),
    "revenue_per_user": MetricConfig(exposure_outcome="revenue_cents", unit="cents"),
    "visit": MetricConfig(event_type=["view", "click"], window_days=7),
    "units": MetricConfig(event_type=["purchase"], aggregate="sum", sum_of="quantity", unit="units"),
}


UPLIFT_LEARNERS = ("two_model", "x_learner", "transformed_outcome")


class UpliftConfig(StrictModel):
    """The uplift evaluation in the experiments (tasks/experiments.py evaluate_uplift) and the gate it sets for
    the personalized policy: a model drives the policy only when its margin over random targeting and its
    Qini coefficient both have bootstrap intervals above zero on the test split."""

    enabled: bool = True
    split: Literal["random", "time"] = Field(
        "random", description="random: users drawn (seeded) into train/validation/test; time: the last days"
    )
    train_share: float = Field(0.6, gt=0, lt=1, description="random split: share of users to train on")
    validation_share: float = Field(
        0.2, gt=0, lt=1, description="random split: users that choose the learner"
    )
    test_share: float = Field(
        0.2, gt=0, lt=1, description="random split: users the chosen learner is measured on"
    )
    test_days: int = Field(14, ge=1, description="time split: the last days before the cutoff are the test")
    validation_days: int = Field(
        14, ge=1, description="time split: the days before the test choose the learner"
    )
    learners: list[Literal["two_model", "x_learner", "transformed_outcome"]] = Field(
        default_factory=lambda: list(UPLIFT_LEARNERS),
        min_length=1,
        description="fitted on the training units; the best validation Qini is evaluated on the test units",
    )
    max_training_units: int = Field(
        200_000,
        ge=1_000,
        description="the learners fit on a seeded sample of this many training units when there are more "
        "(their time grows with the units; validation and test keep every unit)",
    )
    bootstrap_samples: int = Field(
        200, ge=20, description="resamples (each arm drawn separately) behind every interval"
    )
    target_share: float = Field(
        0.3, gt=0, le=1, description="the k of uplift@k that the gate and the report read: share of each arm"
    )
    min_units: int = Field(
        200, ge=10, description="fewer treated or control units in any part of the split: not evaluated"
    )
    n_estimators: int = Field(
        600, ge=1, description="upper bound per booster; early stopping picks the number"
    )
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(7, ge=2)
    min_data_in_leaf: int = Field(100, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)
    early_stopping_share: float = Field(
        0.2, gt=0, lt=1, description="a seeded share of each booster's training rows that stops it"
    )

    @model_validator(mode="after")
    def _shares(self) -> UpliftConfig:
        total = self.train_share + self.validation_share + self.test_share
        if abs(total - 1) > 1e-9:
            raise ValueError(f"uplift: train, validation and test shares must sum to 1, not {total:g}")
        return self


class ExperimentsConfig(StrictModel):
    """How every campaign's variants are measured each night (flows/experiments.py)."""

    enabled: bool = True
    alpha: float = Field(0.05, gt=0, lt=0.5, description="significance level; intervals are 1 - alpha")
    correction: Literal["holm", "bh", "none"] = Field(
        "holm", description="across a campaign's variants: Holm (family-wise) or Benjamini-Hochberg (FDR)"
    )
    window_days: int = Field(
        90, ge=7, description="sends analysed: this many days before the cutoff, from active_from if later"
    )
    cuped: bool = Field(True, description="adjust each metric by the user's same behaviour before the send")
    covariate_days: int = Field(30, ge=1, description="CUPED: days of behaviour before the send")
    sequential: bool = Field(
        True, description="intervals and p-values that stay valid when looked at every night"
    )
    sequential_tuning_units: int = Field(
        5000, ge=100, description="sequential: units at which the interval is tightest"
    )
    srm_p_value: float = Field(
        0.001, gt=0, lt=0.5, description="a sample-ratio test below this flags the allocation as broken"
    )
    pause_harmful_variants: bool = Field(
        True,
        description="bandit and personalized stop sending a variant whose trusted conversion lift against "
        "the control is significantly negative",
    )
    min_units: int = Field(100, ge=2, description="arms with fewer units are reported but not tested")
    max_days_to_decision: int = Field(
        60,
        ge=1,
        description="a variant whose primary metric would need longer than this (at today's enrollment) to "
        "detect the observed difference at 80% power gets the verdict stop: no detectable effect",
    )
    metrics: dict[Annotated[str, Field(pattern=_METRIC_NAME)], MetricConfig] = Field(
        default_factory=dict,
        description="the company's metrics, added to the built-ins (" + ", ".join(BUILTIN_METRICS) + "); an "
        "entry with a built-in's name replaces it",
    )
    uplift: UpliftConfig = Field(default_factory=UpliftConfig)
    ope_bootstrap_samples: int = Field(
        1000,
        ge=100,
        description="policy evaluation: resamples of the logged sends behind each bootstrap interval",
    )

    @property
    def catalogue(self) -> dict[str, MetricConfig]:
        """Every metric a campaign may name: the built-ins (as configured) then the company's own."""
        return BUILTIN_METRICS | self.metrics


USER_ATTRIBUTES = ("country", "language", "age_band", "gender")
# names user_features.sql already gives its columns: a declared attribute may not take one
_TAKEN_FEATURE_NAMES = ("cutoff", "days_since_signup", "known_on", "is_latest", "variant_id", "campaign_id")


class UserFeaturesConfig(StrictModel):
    """What the company knows about its customers beyond Tailor's behavioural features: columns of the users
    source and per-user features computed by its own SQL. Both become features of the propensity,
    conversion and uplift models (a sensitive one only when privacy.sensitive_features names it)."""

    attributes: dict[str, Literal["categorical", "numeric"]] = Field(
        default_factory=dict,
        description="columns of the users source (after `sources.users.columns` mapping) -> categorical or "
        "numeric, e.g. past_year_spend: numeric, acquisition_channel: categorical",
    )
    sql: str | None = Field(
        None,
        description="a .sql file (relative to the config file) returning one row per user_id with the "
        "columns of sql_columns, as of $cutoff: it reads Tailor's staging tables (staging.stg_interactions, "
        "staging.stg_users...) and only events before $cutoff, rows known before $cutoff_day",
    )
    sql_columns: dict[str, Literal["categorical", "numeric"]] = Field(
        default_factory=dict, description="the columns the sql file returns besides user_id -> their kind"
    )

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, attributes: dict[str, str]) -> dict[str, str]:
        for name in attributes:
            if not _PARAMETER_NAME.match(name):
                raise ValueError(f"attribute {name!r} must be a lowercase identifier such as past_year_spend")
            if name in {"user_id", "created_at", "email", *USER_ATTRIBUTES, *_TAKEN_FEATURE_NAMES}:
                raise ValueError(
                    f"attribute {name!r} is already a users column or feature of Tailor's; declare only the "
                    "company's own columns"
                )
        return attributes

    @model_validator(mode="after")
    def _sql_declares_columns(self) -> UserFeaturesConfig:
        if bool(self.sql) != bool(self.sql_columns):
            raise ValueError("sql and sql_columns go together: the file, and the columns it returns")
        self._attribute_names(self.sql_columns)
        clash = sorted(set(self.sql_columns) & set(self.attributes))
        if clash:
            raise ValueError(f"sql_columns: {', '.join(clash)} already declared in attributes")
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (*self.attributes, *self.sql_columns)

    @property
    def categorical(self) -> tuple[str, ...]:
        kinds = self.attributes | self.sql_columns
        return tuple(name for name, kind in kinds.items() if kind == "categorical")


class PrivacyConfig(StrictModel):
    sensitive_attributes: list[str] = Field(
        default_factory=lambda: ["age_band", "gender"],
        description="users columns that are never model features unless named in sensitive_features, and "
        "that the fairness audit breaks results down by",
    )
    sensitive_features: list[str] = Field(
        default_factory=list, description="sensitive attributes the models may use anyway (explicit opt-in)"
    )

    @model_validator(mode="after")
    def _checks(self) -> PrivacyConfig:
        stray = [name for name in self.sensitive_features if name not in self.sensitive_attributes]
        if stray:
            raise ValueError(f"sensitive_features: {', '.join(stray)} not in sensitive_attributes")
        return self


class FairnessConfig(StrictModel):
    enabled: bool = True
    min_ratio: float = Field(
        0.8, gt=0, le=1, description="a group's rate over the most-favoured group's below this is flagged"
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="a gap is flagged only when it is significant")
    min_group_users: int = Field(50, ge=1, description="smaller groups are reported, never flagged")
    fail_on_flag: bool = Field(
        False, description="a flagged ratio fails the run before anything is published"
    )


class ScheduleConfig(StrictModel):
    """When the nightly run starts, and what it does about nights it missed (prefect.yaml, `tailor serve`)."""

    cron: str = Field("0 2 * * *", description="the nightly run's start, in the config's timezone")
    catch_up: Literal["newest", "all"] = Field(
        "newest",
        description="after missed nights: run only tonight, or every missed night up to catch_up_days",
    )
    catch_up_days: int = Field(3, ge=1, le=31, description="the most missed nights caught up in one go")


class SmtpConfig(StrictModel):
    host: str
    port: int = Field(587, ge=1, le=65535)
    sender: str
    recipients: list[str] = Field(min_length=1)
    starttls: bool = Field(True, description="upgrade the connection with STARTTLS before logging in")
    username_env: str | None = Field(None, description="environment variable holding the SMTP user")
    password_env: str | None = Field(None, description="environment variable holding the SMTP password")


class NotificationsConfig(StrictModel):
    """Who hears about a failed run. Addresses of secrets (webhook URL, SMTP password) come from the
    environment, never YAML."""

    webhook_url_env: str | None = Field(
        None, description="environment variable holding a URL that gets a JSON POST per failure"
    )
    smtp: SmtpConfig | None = None


class ComputeConfig(StrictModel):
    """Where scoring and rendering run. Users are split by a hash of their id into shards; each shard is a
    Prefect task, so memory holds a shard, not every user, and the shards can run on a Dask cluster."""

    shards: int | None = Field(
        None, ge=1, le=4096, description="shard count (default: one shard per users_per_shard users)"
    )
    users_per_shard: int = Field(25_000, ge=1, description="sizes the shards when `shards` is not set")
    task_runner: Literal["local", "dask"] = Field(
        "local", description="local: shards run in this process; dask: on a Dask cluster"
    )
    local_workers: int = Field(1, ge=1, le=64, description="shards at once in this process (local runner)")
    dask_address: str | None = Field(
        None, description="the Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)"
    )
    dask_workers: int = Field(2, ge=1, le=256, description="workers of the local cluster (no dask_address)")

    def shard_count(self, users: int) -> int:
        if self.shards is not None:
            return self.shards
        return max(1, -(-users // self.users_per_shard))


class QualityConfig(StrictModel):
    suites_dir: str | None = Field(
        None, description="folder with raw/ and features/ suites (default: Tailor's config/quality)"
    )


class Settings(StrictModel):
    project: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    timezone: str = Field("UTC", description="run dates are days in this zone")
    seed: int = Field(42, description="drives every split, sample and model")
    currency: str = Field(
        "USD",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code of the data's money (price_cents and revenue_cents are its hundredths): "
        "the report shows money in it",
    )
    warehouse: WarehouseConfig = Field(default_factory=WarehouseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    sources: dict[str, SourceConfig]
    publish: PublishConfig
    propensity: PropensityConfig = Field(default_factory=PropensityConfig)
    ranking: RankingConfig = Field(default_factory=RankingConfig)
    recommendations: RecommendationsConfig = Field(default_factory=RecommendationsConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    segments: SegmentsConfig = Field(default_factory=SegmentsConfig)
    item_audiences: ItemAudiencesConfig = Field(default_factory=ItemAudiencesConfig)
    campaigns_dir: str | None = Field(
        None, description="folder of campaign files (*.yaml); default: campaigns/ beside this file, if any"
    )
    campaigns: list[CampaignConfig] = Field(default_factory=list, description="campaigns inline")
    channel_limits: dict[Literal["email", "push", "web"], dict[str, int]] = Field(
        default_factory=_default_channel_limits,
        description="most characters per rendered field; merged over the defaults field by field",
    )
    drafting: DraftingConfig = Field(default_factory=DraftingConfig)
    experiments: ExperimentsConfig = Field(default_factory=ExperimentsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig)
    fairness: FairnessConfig = Field(default_factory=FairnessConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    user_features: UserFeaturesConfig = Field(default_factory=UserFeaturesConfig)
    # filled in by load_settings, not by the YAML
    config_path: Annotated[str, Field(exclude=True)] = ""
    config_sha256: Annotated[str, Field(exclude=True)] = ""

    @field_validator("channel_limits")
    @classmethod
    def _merge_limits(cls, limits: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        merged = _default_channel_limits()
        for channel, fields in limits.items():
            for field, limit in fields.items():
                if field not in ("subject", "headline", "body", "call_to_action") or limit < 1:
                    raise ValueError(f"{channel}.{field}: a limit is a positive count for a template field")
                merged[channel][field] = limit
        return merged

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"unknown time zone {value!r}") from error
        return value

    @field_validator("sources")
    @classmethod
    def _known_tables(cls, sources: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name, source in sources.items():
            if name not in TABLES:
                raise ValueError(f"unknown source {name!r}; the tables are {', '.join(TABLES)}")
            table = TABLES[name]
            for canonical in source.columns:
                # the users source may also map the company's declared attributes (checked with them)
                if canonical not in table.column_names and name != "users":
                    raise ValueError(f"{name}.columns: {canonical!r} is not a column of {name}")
        missing = [name for name in REQUIRED_SOURCES if name not in sources]
        if missing:
            raise ValueError(f"missing required source(s): {', '.join(missing)}")
        return sources

    @model_validator(mode="after")
    def _sensitive_are_users_columns(self) -> Settings:
        # a declared attribute may be sensitive too (an ethnicity, a health flag): it is then kept out of
        # the models like age_band and gender
        known = (*USER_ATTRIBUTES, *self.user_features.feature_names)
        for canonical in self.sources["users"].columns:
            if canonical not in (*TABLES["users"].column_names, *self.user_features.attributes):
                raise ValueError(
                    f"sources.users.columns: {canonical!r} is not a column of users nor an attribute declared "
                    "in user_features.attributes"
                )
        unknown = [name for name in self.privacy.sensitive_attributes if name not in known]
        if unknown:
            raise ValueError(
                f"privacy.sensitive_attributes: {', '.join(unknown)} not a users column "
                f"({', '.join(known)}; declare a company column in user_features.attributes)"
            )
        return self

    @property
    def base_dir(self) -> Path:
        return Path(self.config_path).parent

    def resolve(self, path: str) -> Path:
        candidate = Path(path).expanduser()
        return candidate if candidate.is_absolute() else (self.base_dir / candidate).resolve()

    def resolve_uri(self, uri: str) -> str:
        """A source path or publish target with relative local paths made absolute."""
        if uri.startswith("s3://"):
            return uri
        if uri.startswith("file://"):
            return "file://" + str(self.resolve(uri.removeprefix("file://")))
        return str(self.resolve(uri))

    def source_sql_path(self, table: str) -> Path | None:
        """The file holding a source's SQL: Tailor's own for a bare name, else relative to the config."""
        source = self.sources[table]
        if source.sql is None:
            return None
        if source.builtin_sql:
            return Path(str(resources.files("tailor.sql_models"))) / "sources" / f"{source.sql}.sql"
        return self.resolve(source.sql)

    def source_identity(self, uri: str) -> str:
        """How lineage names a source file: relative to the config's folder when it lies below it."""
        if uri.startswith("s3://"):
            return uri
        path = Path(uri).resolve()
        return str(path.relative_to(self.base_dir)) if path.is_relative_to(self.base_dir) else str(path)

    def pseudonym_key(self) -> bytes | None:
        if self.publish.published_user_id == "external":
            return None
        return os.environ[self.publish.pseudonym_key_env].encode()


def _key_path(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location) or "(top level)"


# How alike a misspelling and a valid key must be (difflib's ratio) before the valid one is suggested: high
# enough that an unrelated key gets no suggestion rather than a misleading one.
_SUGGESTION_CUTOFF = 0.7


def _members(annotation: Any) -> list[Any]:
    """The types a value of this annotation may be: Annotated, Optional and unions unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [annotation]


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _keys(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """The keys a file may give the model, aliases included; excluded fields are filled in by the loader."""
    keys: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        for key in (name, field.alias, field.validation_alias):
            if isinstance(key, str):
                keys[key] = field
    return keys


def _step(annotation: Any, part: int | str) -> list[Any]:
    """The types one part of an error's location leads to: a model's field, a list's item, a dict's value."""
    found: list[Any] = []
    for member in _members(annotation):
        origin = get_origin(member)
        if _is_model(member) and isinstance(part, str):
            field = _keys(member).get(part)
            if field is not None:
                found.append(field.annotation)
            elif part == member.__name__:  # pydantic names the member of a union of models it tried
                found.append(member)
        elif origin in (list, tuple, set, frozenset, Sequence) and isinstance(part, int):
            found.extend(get_args(member)[:1])
        elif origin in (dict, Mapping):
            found.extend(get_args(member)[1:2])
    return found


def suggest_key(model: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The valid key closest to the unknown one that ends `loc` (a pydantic error's location, validating
    `model`), or None when no valid key there is close."""
    if not loc or not isinstance(loc[-1], str):
        return None
    here: list[Any] = [model]
    for part in loc[:-1]:
        here = [found for annotation in here for found in _step(annotation, part)]
    models = [member for annotation in here for member in _members(annotation) if _is_model(member)]
    valid = sorted({key for model_here in models for key in _keys(model_here)})
    close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=_SUGGESTION_CUTOFF)
    return close[0] if close else None


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    key = _key_path(error["loc"])
    if error["type"] == "extra_forbidden":
        suggestion = suggest_key(model, error["loc"])
        return f"key '{key}': unknown key" + (f" (did you mean '{suggestion}'?)" if suggestion else "")
    if error["type"] == "missing":
        return f"key '{key}': required value missing"
    return f"key '{key}': {error['msg']}"


def validation_problems(error: ValidationError, model: type[BaseModel]) -> str:
    """A pydantic error on validating `model` as one line: `key '<dotted key>': <problem>`, joined by '; '."""
    return "; ".join(_describe(detail, model) for detail in error.errors())


def yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message on one line: where, and what (its own text quotes the lines around it)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {error.problem}" + (
            f" ({error.context})" if error.context else ""
        )
    return " ".join(str(error).split())


# Folders a publish target may never be (the run writes and, after a retention period, deletes there).
SYSTEM_FOLDERS = (
    "/etc",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/boot",
    "/proc",
    "/sys",
    "/dev",
)


def refuse_climbing_target(target: str) -> None:
    """A relative `file://` target given on the command line may not climb out with `..` (a typo or a
    pasted path could otherwise publish, and later delete, anywhere): give an absolute path instead."""
    relative = target.startswith("file://") and not target.startswith("file:///")
    if relative and ".." in Path(target.removeprefix("file://")).parts:
        raise ConfigError(
            f"--target {target}: a relative target may not contain '..'; give an absolute one (file:///DIR)"
        )


def system_folder(target: str) -> str | None:
    """The system folder (or `/`) an absolute `file://` target is or lies under, else None."""
    if not target.startswith("file://"):
        return None
    given = target.removeprefix("file://")
    # both the path as written (normalized) and with symlinks followed (/bin -> /usr/bin)
    for path in (os.path.normpath(given), os.path.realpath(given)):
        if path == "/":
            return "/"
        for folder in SYSTEM_FOLDERS:
            if path == folder or path.startswith(folder + "/"):
                return folder
    return None


def load_settings(path: str | Path, overrides: dict[str, Any] | None = None) -> Settings:
    """Read, validate and return the settings, or raise one ConfigError naming the file and keys."""
    config_path = Path(path).resolve()
    try:
        raw_bytes = config_path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config file ({error.strerror})") from error
    try:
        data = yaml.safe_load(raw_bytes) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        settings = Settings.model_validate(
            {
                **data,
                "config_path": str(config_path),
                "config_sha256": hashlib.sha256(raw_bytes).hexdigest(),
            }
        )
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_problems(error, Settings)}") from None
    settings = settings.model_copy(
        update={"campaigns": [*settings.campaigns, *load_campaign_files(settings, path)]}
    )
    check_experiment_metrics(settings, path)
    check_campaigns(settings, path)
    check_source_sql(settings, path)
    target = settings.resolve_uri(settings.publish.target)
    folder = system_folder(target)
    if folder:
        raise ConfigError(
            f"{path}: key 'publish.target': {target} is {'the root folder' if folder == '/' else 'under ' + folder}"
            "; publish to a folder of your own"
        )
    key_env = settings.publish.pseudonym_key_env
    if settings.publish.published_user_id == "pseudonymous" and not os.environ.get(key_env):
        raise ConfigError(
            f"{path}: key 'publish.published_user_id' is 'pseudonymous' but the environment variable "
            f"{key_env} (the pseudonymisation key) is not set"
        )
    return settings


def campaign_files(settings: Settings) -> list[Path]:
    if settings.campaigns_dir is None:
        folder = settings.base_dir / "campaigns"
        return sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    folder = settings.resolve(settings.campaigns_dir)
    if not folder.is_dir():
        raise ConfigError(f"{settings.config_path}: key 'campaigns_dir': {folder} is not a folder")
    return sorted(folder.glob("*.yaml"))


def load_campaign_files(settings: Settings, config_name: str | Path) -> list[CampaignConfig]:
    """One campaign per file; an error names the file and the key within it."""
    campaigns = []
    for file in campaign_files(settings):
        try:
            data = yaml.safe_load(file.read_text())
        except OSError as error:
            raise ConfigError(f"{file}: cannot read campaign file ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{file}: not valid YAML: {yaml_problem(error)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: a campaign file holds one mapping of keys")
        try:
            campaign = CampaignConfig.model_validate(data)
        except ValidationError as error:
            raise ConfigError(f"{file}: {validation_problems(error, CampaignConfig)}") from None
        campaigns.append(campaign.model_copy(update={"source_file": str(file)}))
    return campaigns


def check_source_sql(settings: Settings, config_name: str | Path) -> None:
    """Every source's SQL file is there and reads no parameter it will not be given: before any data is."""
    for table, source in settings.sources.items():
        file = settings.source_sql_path(table)
        if file is None:
            continue
        key = f"sources.{table}.sql"
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{config_name}: key '{key}': SQL file {file} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{config_name}: key '{key}': cannot read SQL file {file} ({error})") from None
        # comments may mention parameters freely; only the statement's own must be bound
        from tailor.sql import parameter_names  # here: loading a config needs no DuckDB otherwise

        wanted = parameter_names(text)
        given = ["file", *source.inputs]
        unknown = sorted(wanted - set(given))
        if unknown:
            raise ConfigError(
                f"{config_name}: key '{key}': {file} reads {', '.join('$' + name for name in unknown)}, "
                f"which sources.{table}.inputs does not name (it is given {', '.join('$' + n for n in given)})"
            )


# The parameters experiments bind into a metric's SQL file.
METRIC_SQL_PARAMETERS = ("campaign_id", "window_start", "cutoff", "cutoff_day")


def covariate_attributes(settings: Settings) -> tuple[str, ...]:
    """The users columns a covariate may read: the company's numeric attributes (user_features.attributes
    become columns of staging.stg_users; Tailor's own users columns are text)."""
    return tuple(name for name, kind in settings.user_features.attributes.items() if kind == "numeric")


def check_experiment_metrics(settings: Settings, config_name: str | Path) -> None:
    """Each metric's covariate reads known columns and its SQL file exists and reads only the parameters it
    is given: before any data is read."""
    from tailor.sql import parameter_names  # here: loading a config needs no DuckDB otherwise

    attributes = covariate_attributes(settings)
    for name, metric in settings.experiments.metrics.items():
        key = f"experiments.metrics.{name}"
        for column in metric.attributes:
            if column not in attributes or column in UNIT_COLUMNS:
                raise ConfigError(
                    f"{config_name}: key '{key}.covariate': {column!r} is neither a behaviour column "
                    f"({', '.join(BEHAVIOUR_COLUMNS)}) nor a numeric users attribute "
                    f"({', '.join(attributes) or 'none declared'}; declare it in user_features.attributes as "
                    "numeric)"
                )
        if metric.sql is None:
            continue
        file = settings.resolve(metric.sql)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"{config_name}: key '{key}.sql': cannot read SQL file {file} ({error})"
            ) from None
        unknown = sorted(parameter_names(text) - set(METRIC_SQL_PARAMETERS))
        if unknown:
            raise ConfigError(
                f"{config_name}: key '{key}.sql': {file} reads {', '.join('$' + n for n in unknown)}; a metric's "
                f"SQL is given {', '.join('$' + n for n in METRIC_SQL_PARAMETERS)}"
            )


def check_campaign_metrics(campaign: CampaignConfig, settings: Settings, where: str) -> None:
    """The campaign's primary metric and guardrails are in the catalogue, and the primary can be tested
    against the control."""
    catalogue = settings.experiments.catalogue
    known = ", ".join(catalogue)
    for key, names in (
        ("primary_metric", [campaign.primary_metric]),
        ("guardrails", campaign.guardrails or []),
    ):
        for name in names:
            if name not in catalogue:
                raise ConfigError(f"{where}: {key} {name!r} is not in experiments.metrics ({known})")
    if campaign.control_variant is None and catalogue[campaign.primary_metric].needs_message:
        # the holdout gets no message, so the comparison the decision would rest on is never tested
        raise ConfigError(
            f"{where}: primary_metric {campaign.primary_metric!r} cannot be measured against the holdout (it "
            "gets no message): set control_variant or choose another primary_metric"
        )


def check_campaigns(settings: Settings, config_name: str | Path) -> None:
    """Unique ids, known audience segments, and templates that can render: all before any data is read."""
    # imported here: templates.py needs nothing from config, config needs it only for this check
    from tailor.templates import TEMPLATE_FIELDS, template_problem

    seen: dict[str, str] = {}
    segments = [rule.name for rule in settings.segments.rfm_rules]
    for index, campaign in enumerate(settings.campaigns):
        where = campaign.source_file or str(config_name)
        check_campaign_metrics(
            campaign, settings, campaign.source_file or f"{config_name}: campaigns.{index}"
        )
        if campaign.campaign_id in seen:
            raise ConfigError(
                f"{where}: campaign_id {campaign.campaign_id!r} is also used in {seen[campaign.campaign_id]}"
            )
        seen[campaign.campaign_id] = where
        for name in campaign.audience.segments:
            if name not in segments:
                raise ConfigError(
                    f"{where}: campaign {campaign.campaign_id}, key 'audience.segments': {name!r} is not a "
                    f"segment; the segments are {', '.join(segments)}"
                )
        limits = settings.channel_limits.get(campaign.channel, {})
        for variant in campaign.variants:
            for field in TEMPLATE_FIELDS:
                problem = template_problem(
                    getattr(variant, field), campaign.channel, field, limits.get(field)
                )
                if problem:
                    raise ConfigError(
                        f"{where}: campaign {campaign.campaign_id}, variant {variant.variant_id}, "
                        f"{field}: {problem}"
                    )


def _set_dotted(data: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, leaf = dotted_key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
