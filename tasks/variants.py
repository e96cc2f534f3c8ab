"""Variants: for every active campaign, put each user in its audience in the holdout or one approved
variant under the campaign's allocation policy, and render that variant's copy for the user.

Policies:
    split         fixed shares from the variants' weights (a classic A/B test);
    bandit        Thompson sampling: each variant's share is its posterior chance of converting best,
                  from the Beta(prior + conversions, prior + non-conversions) posteriors the experiment
                  analysis stored (the newest trusted ones: a night that failed the sample-ratio check
                  steers nothing);
    personalized  gated by the experiments' uplift evaluation (tasks/experiments.py evaluate_uplift): where
                  a variant's uplift model cleared random targeting (its margin over random and its Qini
                  coefficient with bootstrap intervals above zero), each user gets the variant of highest
                  predicted uplift over no contact; where none did, the best single variant (highest
                  posterior mean conversion) serves everyone, with the reason uplift_not_proven. A
                  configured share of users explores a uniformly random variant instead; with
                  skip_without_uplift a user expected to gain nothing is not contacted. Users without
                  profiling consent are never scored: the split.
    contextual_bandit  Thompson sampling per context (allocation.context: the RFM segment by default), from
                  per-context Beta posteriors shrunk to the bandit's pooled ones (tailor/bandit.py); it
                  serves only when tonight's policy evaluation finds it not worse than the context-free
                  bandit (tasks/ope.py: contextual_verdict), else the bandit serves and the decision log
                  says why.

A variant a trusted analysis found significantly harmful gets no traffic from bandit or personalized.
Every draw is a hash of (salt, campaign, user): the holdout is stable from night to night, and a user moves
between variants only when the shares or the model move. Drafts are never allocated. Each arm's share, the
share the night before and the reason go to meta.allocation_decisions (the decision log).
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import timedelta
from itertools import accumulate
from typing import Any

import duckdb
import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa
from jinja2 import Template, TemplateError
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor import bandit, human
from tailor.config import CampaignConfig, Settings
from tailor.progress import reported
from tailor.sql import materialize, query, replace_run_rows
from tailor.tasks.experiments import (
    DECISION_COLUMNS,
    HOLDOUT,
    Feedback,
    UpliftGate,
    allocation_feedback,
    best_single_variant,
    ensure_tables,
    predicted_uplift,
    uplift_gate,
)
from tailor.tasks.ope import context_evidence, contextual_verdict, logged_sends
from tailor.tasks.score import replace_table
from tailor.tasks.shards import Shard, ShardWriter, make_shards
from tailor.templates import TEMPLATE_FIELDS, compile_template, context_names, fit_to_limit, render_timer
from tailor.warehouse import RunContext, connect

log = logging.getLogger(__name__)

ITEMS_IN_CONTEXT = 3
CONTENT_SCHEMA = {
    "run_date": pl.Date,
    "campaign_id": pl.Utf8,
    "channel": pl.Utf8,
    "consent_purpose": pl.Utf8,
    "user_id": pl.Utf8,
    "variant_id": pl.Utf8,
    "is_holdout": pl.Boolean,
    "allocation_policy": pl.Utf8,
    "allocation_reason": pl.Utf8,
    "is_personalized": pl.Boolean,
    "expected_conversion": pl.Float64,
    "expected_uplift": pl.Float64,
    "segment": pl.Utf8,
    "subject": pl.Utf8,
    "headline": pl.Utf8,
    "body": pl.Utf8,
    "call_to_action": pl.Utf8,
    "recommended_item_ids": pl.Utf8,
}


RENDERED_FIELDS = (*TEMPLATE_FIELDS, "recommended_item_ids")


class TemplateRenderError(ValueError):
    """A campaign template that cannot be rendered; names the campaign, variant and field."""


@dataclass
class Allocation:
    variant_id: np.ndarray  # str per user
    reason: np.ndarray  # str per user
    is_personalized: np.ndarray  # bool per user
    expected_conversion: np.ndarray  # float per user (NaN when no model scored it)
    expected_uplift: np.ndarray  # float per user: over no contact (NaN without a no-contact model)
    shares: dict[str, float]  # the policy's intended share of each variant among non-holdout users
    detail: dict[str, Any]


def arm_bounds(variant_ids: list[str], shares: list[float]) -> tuple[list[float], list[float]]:
    """[lower, upper) slices of the unit interval proportional to the shares."""
    total = sum(shares)
    uppers = [edge / total for edge in accumulate(shares)]
    uppers[-1] = 1.0 + 1e-9  # draws are < 1; keep the last arm closed against rounding
    return [0.0, *uppers[:-1]], uppers


def by_share(draws: np.ndarray, variant_ids: list[str], shares: list[float]) -> np.ndarray:
    _lowers, uppers = arm_bounds(variant_ids, shares)
    index = np.searchsorted(np.asarray(uppers), draws, side="right")
    return np.asarray(variant_ids, dtype=object)[np.minimum(index, len(variant_ids) - 1)]


def thompson_shares(
    posteriors: dict[str, tuple[float, float]], variant_ids: list[str], campaign: CampaignConfig, seed: int
) -> tuple[list[float], dict[str, Any]]:
    """Each variant's posterior probability of having the highest conversion rate (Monte Carlo, seeded).
    A variant without a stored posterior (new tonight) starts from the campaign's prior."""
    prior = (campaign.allocation.prior_successes, campaign.allocation.prior_failures)
    alphas = [posteriors.get(variant_id, prior)[0] for variant_id in variant_ids]
    betas = [posteriors.get(variant_id, prior)[1] for variant_id in variant_ids]
    wins = bandit.chance_best(alphas, betas, seed)
    posterior = {
        variant_id: {"alpha": a, "beta": b, "mean": a / (a + b), "p_best": float(p)}
        for variant_id, a, b, p in zip(variant_ids, alphas, betas, wins, strict=True)
    }
    # a variant that never wins a sample still keeps a sliver of traffic, so evidence can change its fate
    shares = [max(float(p), bandit.MIN_SHARE) for p in wins]
    return shares, {"posterior": posterior}


def allocate(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    users: pl.DataFrame,
    models: dict[str, dict[str, Any]],
    settings: Settings,
    ctx: RunContext,
    feedback: Feedback,
) -> Allocation:
    live = [variant for variant in campaign.approved_variants if variant.variant_id not in feedback.paused]
    variant_ids = [variant.variant_id for variant in live]
    weights = [variant.weight for variant in live]
    n = users.height
    variant_draw = users["variant_draw"].to_numpy()
    split = by_share(variant_draw, variant_ids, weights)
    no_model = np.full(n, np.nan)
    policy = campaign.allocation.policy
    if policy == "split":
        return Allocation(split, np.full(n, "split", dtype=object), np.zeros(n, bool), no_model, no_model,
                          dict(zip(variant_ids, np.asarray(weights) / sum(weights), strict=True)), {})  # fmt: skip
    if policy == "contextual_bandit":
        serves, why = contextual_verdict(con, campaign, ctx)
        if serves:
            return allocate_contextual(con, campaign, users, settings, ctx, feedback, variant_ids, why)
    if policy in ("bandit", "contextual_bandit"):
        shares, detail = thompson_shares(feedback.posteriors, variant_ids, campaign, settings.seed)
        chosen = by_share(variant_draw, variant_ids, shares)
        total = sum(shares)
        return Allocation(chosen, np.full(n, "thompson", dtype=object), np.zeros(n, bool), no_model, no_model,
                          {v: s / total for v, s in zip(variant_ids, shares, strict=True)},
                          detail | {"evidence": {v: feedback.evidence.get(v, (0, 0)) for v in variant_ids},
                                    "posterior_date": feedback.posterior_date}
                          | ({"contextual": why} if policy == "contextual_bandit" else {}))  # fmt: skip
    return allocate_personalized(con, campaign, users, variant_ids, split, ctx, feedback, settings)


def allocate_contextual(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    users: pl.DataFrame,
    settings: Settings,
    ctx: RunContext,
    feedback: Feedback,
    variant_ids: list[str],
    why: str,
) -> Allocation:
    """Thompson sampling per context: each context's posteriors are the pooled ones (tonight's bandit
    posteriors) worth context_prior_sends, plus the context's own sends over the lookback."""
    allocation = campaign.allocation
    n = users.height
    start = ctx.cutoff - timedelta(days=allocation.lookback_days)
    sends = logged_sends(con, campaign.campaign_id, settings, ctx, start)
    prior = (allocation.prior_successes, allocation.prior_failures)
    pooled = {variant: feedback.posteriors.get(variant, prior) for variant in variant_ids}
    posteriors = bandit.context_posteriors(
        context_evidence(sends, allocation.context), pooled, variant_ids, allocation.context_prior_sends
    )
    shares = bandit.contextual_shares(posteriors, variant_ids, settings.seed)
    # a context without sends yet (a new segment or country) gets the context-free bandit's shares
    pooled_shares = bandit.shares_from(
        bandit.chance_best(
            [pooled[v][0] for v in variant_ids], [pooled[v][1] for v in variant_ids], settings.seed
        )
    )
    contexts = users[allocation.context].fill_null("unknown").to_numpy()
    draws = users["variant_draw"].to_numpy()
    chosen = np.empty(n, dtype=object)
    served = np.zeros(len(variant_ids))
    for context in np.unique(contexts):
        rows = contexts == context
        context_shares = shares.get(str(context), pooled_shares)
        chosen[rows] = by_share(draws[rows], variant_ids, list(context_shares))
        served += rows.sum() * context_shares
    overall = served / n if n else pooled_shares
    no_model = np.full(n, np.nan)
    detail = {
        "contextual": why,
        "context": allocation.context,
        "context_shares": {
            context: dict(zip(variant_ids, s.tolist(), strict=True)) for context, s in shares.items()
        },
        "evidence": {v: feedback.evidence.get(v, (0, 0)) for v in variant_ids},
        "posterior_date": feedback.posterior_date,
    }
    return Allocation(chosen, np.full(n, "contextual_thompson", dtype=object), np.zeros(n, bool), no_model,
                      no_model, dict(zip(variant_ids, overall.tolist(), strict=True)), detail)  # fmt: skip


def allocate_personalized(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    users: pl.DataFrame,
    variant_ids: list[str],
    split: np.ndarray,
    ctx: RunContext,
    feedback: Feedback,
    settings: Settings | None = None,
) -> Allocation:
    """The uplift gate: where the latest uplift evaluation proved a variant's model (its margin over random
    targeting and its Qini clear zero), each profiled user gets the variant of highest predicted uplift (a
    variant evaluated but not proven counts at its measured average effect, one never evaluated not at all);
    otherwise every profiled user gets the best single variant by posterior mean conversion, with the reason
    uplift_not_proven. Explorers get a uniformly random variant either way; users without profiling consent
    the split."""
    n = users.height
    uniform = by_share(users["variant_draw"].to_numpy(), variant_ids, [1.0] * len(variant_ids))
    chosen = split.copy()
    reason = np.full(n, "no_profiling_consent", dtype=object)
    expected, expected_uplift = np.full(n, np.nan), np.full(n, np.nan)
    allows = users["allows_profiling"].to_numpy()
    exploring = users["explore_draw"].to_numpy() < campaign.allocation.exploration_share
    scored_rows = np.flatnonzero(allows)
    gate = uplift_gate(con, campaign, ctx).only(variant_ids)
    prior = (campaign.allocation.prior_successes, campaign.allocation.prior_failures)
    posteriors = {v: feedback.posteriors.get(v, prior) for v in variant_ids}
    conversion = {v: a / (a + b) for v, (a, b) in posteriors.items()}
    detail: dict[str, Any] = {
        "uplift_evaluation": gate.run_date.isoformat() if gate.run_date else None,
        "uplift_gate": {v: gate.reasons.get(v, "no uplift evaluation yet") for v in variant_ids},
        "uplift_learners": {v: m["learner"] for v, m in gate.models.items()},
    }
    predicted = _gated_uplift(con, campaign, users[scored_rows], gate, ctx, settings)
    if predicted:
        candidates = list(predicted)
        matrix = np.column_stack([predicted[v] for v in candidates])
        best = matrix.argmax(axis=1)
        chosen[scored_rows] = np.asarray(candidates, dtype=object)[best]
        expected_uplift[scored_rows] = matrix[np.arange(len(scored_rows)), best]
        reason[scored_rows] = "model_best"
    else:
        single = best_single_variant(posteriors)
        chosen[scored_rows] = single
        reason[scored_rows] = "uplift_not_proven"
        detail["best_single_variant"] = single
        log.info("campaign %s: no uplift model proven (%s); the best single variant %s serves",
                 campaign.campaign_id, "; ".join(detail["uplift_gate"].values()), single)  # fmt: skip
    explore_rows = allows & exploring
    chosen[explore_rows] = uniform[explore_rows]
    reason[explore_rows] = "exploration"
    if predicted:
        # the predicted uplift of the variant an explorer actually got (none for a variant the gate left out)
        column = {v: i for i, v in enumerate(predicted)}
        for row_index, row in enumerate(scored_rows):
            if exploring[row]:
                index = column.get(chosen[row])
                expected_uplift[row] = matrix[row_index, index] if index is not None else np.nan
    expected[scored_rows] = [conversion[v] for v in chosen[scored_rows]]
    if campaign.allocation.skip_without_uplift and predicted:
        skip = (reason == "model_best") & (expected_uplift <= campaign.allocation.min_uplift)
        reason[skip] = "no_expected_uplift"
        detail["not_contacted_no_uplift"] = int(skip.sum())
    is_personalized = reason == "model_best"
    return Allocation(chosen, reason, is_personalized, expected, expected_uplift, {}, detail)


def _gated_uplift(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, profiled: pl.DataFrame, gate: UpliftGate,
    ctx: RunContext, settings: Settings | None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Per candidate variant, each profiled user's predicted uplift: the proven models' predictions, and the
    measured average effect of a variant evaluated but not proven. Empty when no model is proven (or its
    files are gone: the gate then serves the best single variant, as for an unproven model)."""
    if not gate.models or profiled.height == 0:
        return {}
    try:
        predicted = predicted_uplift(con, campaign, profiled, gate, ctx, settings)
    except (OSError, lgb.basic.LightGBMError) as error:
        log.warning("campaign %s: the uplift models of %s cannot be loaded (%s); the best single variant serves",
                    campaign.campaign_id, gate.run_date, error)  # fmt: skip
        return {}
    flat = {
        v: np.full(profiled.height, effect) for v, effect in gate.average_effect.items() if v not in predicted
    }
    return predicted | flat


def compile_variants(campaign: CampaignConfig) -> dict[str, dict[str, Template]]:
    compiled: dict[str, dict[str, Template]] = {}
    for variant in campaign.approved_variants:
        compiled[variant.variant_id] = {}
        for field in TEMPLATE_FIELDS:
            try:
                compiled[variant.variant_id][field] = compile_template(
                    getattr(variant, field), campaign.channel, field
                )
            except TemplateError as error:
                raise TemplateRenderError(
                    f"campaign {campaign.campaign_id}, variant {variant.variant_id}, {field}: {error}"
                ) from None
    return compiled


def template_reads(campaign: CampaignConfig) -> dict[str, dict[str, tuple[str, ...]]]:
    """variant -> field -> the context names its template reads, in a fixed order."""
    return {
        variant.variant_id: {
            field: tuple(sorted(context_names(getattr(variant, field), campaign.channel, field)))
            for field in TEMPLATE_FIELDS
        }
        for variant in campaign.approved_variants
    }


def render_rows(
    campaign: CampaignConfig,
    users: pl.DataFrame,
    variant_ids: np.ndarray,
    is_holdout: np.ndarray,
    items: dict[str, list[dict[str, Any]]],
    limits: dict[str, int],
) -> tuple[dict[str, list[str | None]], int]:
    """Rendered fields per user (None for the holdout) and how many texts were cut to the channel's limit.

    A field's text depends only on the values of the context names its template reads, and many users share
    them (a fixed call to action, a subject per country, the same fallback items): each distinct text is
    rendered once."""
    templates = compile_variants(campaign)
    reads = template_reads(campaign)
    out: dict[str, list[str | None]] = {field: [] for field in (*TEMPLATE_FIELDS, "recommended_item_ids")}
    cache: dict[tuple[Any, ...], tuple[str, bool]] = {}
    truncated = 0
    rows = zip(users["user_id"], users["country"], users["language"], users["segment"], strict=True)
    with render_timer():  # each render is still timed; its handler is installed once
        for (user_id, country, language, segment), variant_id, holdout in zip(
            rows, variant_ids, is_holdout, strict=True
        ):
            if holdout:  # the holdout gets no message: it measures "no contact"
                for values in out.values():
                    values.append(None)
                continue
            user_list = items.get(user_id, [])
            # what distinguishes this user's context (the campaign's part is the same for everyone here); the
            # items by every value: the same items can carry another user's reason
            keys: dict[str, Any] = {"user": (country, language), "segment": segment}
            context: dict[str, Any] | None = None
            for field in TEMPLATE_FIELDS:
                names = reads[variant_id][field]
                if "items" in names and "items" not in keys:
                    keys["items"] = tuple(tuple(item.values()) for item in user_list)
                key = (variant_id, field, *(keys.get(name) for name in names))
                if key not in cache:
                    context = context or {
                        "user": {"country": country, "language": language},
                        "segment": segment,
                        "items": user_list,
                        "campaign": {"id": campaign.campaign_id, "channel": campaign.channel},
                    }
                    try:
                        text = templates[variant_id][field].render(context).strip()
                    except TemplateError as error:
                        raise TemplateRenderError(
                            f"campaign {campaign.campaign_id}, variant {variant_id}, {field}: failed for a user: {error}"
                        ) from None
                    cache[key] = fit_to_limit(text, limits.get(field))
                text, was_cut = cache[key]
                truncated += was_cut
                out[field].append(text or None)
            out["recommended_item_ids"].append(",".join(item["item_id"] for item in user_list) or None)
    return out, truncated


def previous_shares(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext
) -> dict[str, float]:
    rows = con.execute(
        "select variant_id, share from meta.allocation_decisions where campaign_id = $campaign_id and run_date = "
        "(select max(run_date) from meta.allocation_decisions where campaign_id = $campaign_id and run_date < $run_date)",
        {"campaign_id": campaign.campaign_id, "run_date": ctx.run_date},
    ).fetchall()
    return {variant_id: share for variant_id, share in rows}


def explain(campaign: CampaignConfig, allocation: Allocation, variant_id: str, users: pl.DataFrame) -> str:
    """Why the variant has tonight's share, in words; shares and chances as percentages (12.5%, a small one
    0.004%)."""
    policy = campaign.allocation.policy
    if policy == "split":
        return "fixed split by the variants' weights"
    if "context_shares" in allocation.detail:
        contexts = allocation.detail["context_shares"]
        return (
            f"{allocation.detail['contextual']}; Thompson sampling per {allocation.detail['context']} over "
            f"{len(contexts):,} contexts, share {human.share(allocation.shares[variant_id])} overall"
        )
    if policy in ("bandit", "contextual_bandit"):
        prefix = f"{allocation.detail['contextual']}; " if "contextual" in allocation.detail else ""
        posterior = allocation.detail["posterior"][variant_id]
        sends, conversions = allocation.detail["evidence"][variant_id]
        source = allocation.detail.get("posterior_date")
        return (
            f"{prefix}Thompson sampling: P(best) {human.share(posterior['p_best'])} from {sends:,} sends and "
            f"{conversions:,} conversions"
            + (f" (analysis of {source})" if source else " (no stored analysis yet)")
        )
    mine = users.filter(pl.col("variant_id") == variant_id)
    by_reason = dict(mine.group_by("allocation_reason").len().iter_rows())
    parts = [f"{count:,} {why.replace('_', ' ')}" for why, count in sorted(by_reason.items())]
    return (
        "personalized: "
        + (", ".join(parts) if parts else "chosen for no user")
        + gate_note(allocation, variant_id)
    )


def gate_note(allocation: Allocation, variant_id: str) -> str:
    """The uplift gate's words for the decision log: every variant's evaluation where none is proven (why the
    best single variant serves), else this variant's."""
    gate = allocation.detail.get("uplift_gate", {})
    single = allocation.detail.get("best_single_variant")
    if single is not None:
        return f"; no uplift model proven, the best single variant ({single}) serves: " + "; ".join(
            f"{variant}: {reason}" for variant, reason in gate.items()
        )
    return f"; uplift model: {gate[variant_id]}" if variant_id in gate else ""


def decision_rows(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    allocation: Allocation,
    feedback: Feedback,
    content: pl.DataFrame,
    ctx: RunContext,
) -> list[dict[str, Any]]:
    """The decision log: each arm's share tonight, the share the night before, and why."""
    previous = previous_shares(con, campaign, ctx)
    contacted = content.filter(~pl.col("is_holdout"))
    counts = dict(content.group_by("variant_id").len().iter_rows())
    rows = []
    for variant_id in [*(v.variant_id for v in campaign.approved_variants), HOLDOUT]:
        if variant_id == HOLDOUT:
            share = counts.get(HOLDOUT, 0) / content.height if content.height else 0.0
            reason = f"holdout: {human.share(campaign.holdout_share)} of the audience is never contacted"
        elif variant_id in feedback.paused:
            share, reason = 0.0, feedback.paused[variant_id]
        elif campaign.allocation.policy == "personalized":
            share = counts.get(variant_id, 0) / contacted.height if contacted.height else 0.0
            reason = explain(campaign, allocation, variant_id, contacted)
        else:
            share = allocation.shares.get(variant_id, 0.0)
            reason = explain(campaign, allocation, variant_id, contacted)
        if variant_id != HOLDOUT and feedback.notes:
            reason += "; " + "; ".join(feedback.notes)
        rows.append(
            {
                "run_date": ctx.run_date,
                "campaign_id": campaign.campaign_id,
                "variant_id": variant_id,
                "policy": campaign.allocation.policy,
                "users": counts.get(variant_id, 0),
                "share": share,
                "previous_share": previous.get(variant_id),
                "reason": reason,
            }
        )
        was = previous.get(variant_id)
        log.info("campaign %s, %s: share %.3f (was %s): %s", campaign.campaign_id, variant_id, share,
                 "none" if was is None else f"{was:.3f}", reason)  # fmt: skip
    return rows


def allocated_users(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    models: dict[str, dict[str, Any]],
    settings: Settings,
    ctx: RunContext,
) -> tuple[pl.DataFrame, dict[str, Any], list[dict[str, Any]]]:
    """The campaign's audience, each user in the holdout or a variant (the content rows before rendering),
    the campaign's summary and its decision-log rows."""
    users = query(
        con,
        "marts/campaign_audience",
        {
            "campaign_id": campaign.campaign_id,
            "consent_purposes": campaign.required_consents,
            "segments": campaign.audience.segments,
            "salt": campaign.salt,
        },
    ).pl()
    feedback = allocation_feedback(con, campaign, settings, ctx)
    allocation = allocate(con, campaign, users, models, settings, ctx, feedback)
    is_holdout = users["holdout_draw"].to_numpy() < campaign.holdout_share
    # users the uplift model expects nothing from are not contacted (the holdout still measures them)
    keep = is_holdout | (allocation.reason != "no_expected_uplift")
    users, is_holdout = users.filter(pl.Series(keep)), is_holdout[keep]
    variant_ids = np.where(is_holdout, HOLDOUT, allocation.variant_id[keep])
    n = users.height
    frame = pl.DataFrame(
        {
            "run_date": [ctx.run_date] * n,
            "campaign_id": [campaign.campaign_id] * n,
            "channel": [campaign.channel] * n,
            "consent_purpose": [",".join(campaign.required_consents)] * n,
            "user_id": users["user_id"],
            "variant_id": variant_ids.tolist(),
            "is_holdout": is_holdout,
            "allocation_policy": [campaign.allocation.policy] * n,
            "allocation_reason": np.where(is_holdout, HOLDOUT, allocation.reason[keep]).tolist(),
            "is_personalized": allocation.is_personalized[keep] & ~is_holdout,
            "expected_conversion": np.where(is_holdout, np.nan, allocation.expected_conversion[keep]),
            "expected_uplift": np.where(is_holdout, np.nan, allocation.expected_uplift[keep]),
            "segment": users["segment"],
        },
        schema={name: kind for name, kind in CONTENT_SCHEMA.items() if name not in RENDERED_FIELDS},
    ).with_columns(
        pl.col("expected_conversion", "expected_uplift").fill_nan(None),
        users["country"],
        users["language"],
    )
    decisions = decision_rows(con, campaign, allocation, feedback, frame, ctx)
    summary = {
        "policy": campaign.allocation.policy,
        "audience_users": n,
        "holdout_share_observed": float(is_holdout.mean()) if n else 0.0,
        "intended_shares": allocation.shares,
        "users_by_arm": dict(sorted(frame.group_by("variant_id").len().iter_rows())),
        "paused": feedback.paused,
        **allocation.detail,
    }
    return frame, summary, decisions


ALLOCATED_SCHEMA = pa.schema(
    [
        (name, pa.string())
        for name in ("campaign_id", "user_id", "country", "language", "segment", "variant_id")
    ]
    + [("is_holdout", pa.bool_()), ("ordinal", pa.int64())]
)
ITEMS_SCHEMA = pa.schema(
    [("user_id", pa.string()), ("item_id", pa.string()), ("title", pa.string()), ("category", pa.string()),
     ("price_cents", pa.int64()), ("reason", pa.string())]
)  # fmt: skip
RENDERED_SCHEMA = {"campaign_id": pl.Utf8, "user_id": pl.Utf8} | {name: pl.Utf8 for name in RENDERED_FIELDS}


@dataclass(frozen=True)
class RenderPlan:
    shards: list[Shard]
    summaries: dict[str, dict[str, Any]]


@task(name="allocate", cache_policy=NO_CACHE)
@reported("allocate")
def allocate_campaigns(settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]) -> RenderPlan:
    """Allocate every campaign active on the run date and log each decision; the users to render, with
    the items their copy can show, go to one file per user shard."""
    active = [campaign for campaign in settings.campaigns if campaign.is_active(ctx.run_date)]
    summaries: dict[str, dict[str, Any]] = {}
    frames, decisions = [], []
    with connect(settings) as con:
        ensure_tables(con)
        for campaign in active:
            frame, summaries[campaign.campaign_id], rows = allocated_users(
                con, campaign, models, settings, ctx
            )
            frames.append(frame)
            decisions += rows
        allocated = pl.concat(frames) if frames else pl.DataFrame(schema=CONTENT_SCHEMA).drop(RENDERED_FIELDS)
        allocated = allocated.with_row_index("ordinal").with_columns(pl.col("ordinal").cast(pl.Int64))
        replace_table(con, "model.content_allocation", allocated.drop("country", "language").to_arrow())
        replace_run_rows(con, "meta.allocation_decisions", DECISION_COLUMNS, decisions, ctx.run_date)
        items = query(con, "marts/campaign_items", {"n": ITEMS_IN_CONTEXT}).pl()
    folder = ctx.run_dir / "rendering"
    shutil.rmtree(folder, ignore_errors=True)
    shards = make_shards(folder, settings.compute.shard_count(allocated["user_id"].n_unique()))
    with ShardWriter(shards, "allocated", ALLOCATED_SCHEMA) as writer:
        writer.write(allocated.select(ALLOCATED_SCHEMA.names))
    with ShardWriter(shards, "items", ITEMS_SCHEMA) as writer:
        writer.write(items.select(ITEMS_SCHEMA.names))
    return RenderPlan(shards, dict(sorted(summaries.items())))


def shard_items(shard: Shard) -> dict[str, list[dict[str, Any]]]:
    items: dict[str, list[dict[str, Any]]] = {}
    for row in pl.read_parquet(shard.path("items")).iter_rows(named=True):
        items.setdefault(row.pop("user_id"), []).append(row)
    return items


@task(name="render-shard", cache_policy=NO_CACHE, task_run_name="render-shard-{shard.index}")
def render_shard(settings: Settings, shard: Shard) -> dict[str, int]:
    """Render one shard's users for every campaign; returns how many texts each campaign cut to a limit."""
    allocated = pl.read_parquet(shard.path("allocated"))
    items = shard_items(shard)
    campaigns = {campaign.campaign_id: campaign for campaign in settings.campaigns}
    frames, truncated = [], {}
    for (campaign_id,), users in allocated.partition_by(
        "campaign_id", as_dict=True, maintain_order=True
    ).items():
        campaign = campaigns[str(campaign_id)]
        rendered, truncated[campaign.campaign_id] = render_rows(
            campaign,
            users,
            users["variant_id"].to_numpy(),
            users["is_holdout"].to_numpy(),
            items,
            settings.channel_limits.get(campaign.channel, {}),
        )
        frames.append(pl.DataFrame({"campaign_id": users["campaign_id"], "user_id": users["user_id"], **rendered},
                                   schema=RENDERED_SCHEMA))  # fmt: skip
    out = pl.concat(frames) if frames else pl.DataFrame(schema=RENDERED_SCHEMA)
    out.write_parquet(shard.path("rendered"))
    return truncated


@task(name="variants", cache_policy=NO_CACHE)
@reported("variants")
def store_content(
    settings: Settings, ctx: RunContext, plan: RenderPlan, truncated: list[dict[str, int]]
) -> dict[str, dict[str, Any]]:
    """The rendered shards joined back onto the allocation, in its order: marts.content. Returns a summary
    per campaign."""
    with connect(settings) as con:
        rows = materialize(
            con, "marts/content", {"files": [str(shard.path("rendered")) for shard in plan.shards]}
        )
        con.execute("drop table if exists model.content_allocation")
    shutil.rmtree(ctx.run_dir / "rendering", ignore_errors=True)
    summaries = {name: dict(summary) for name, summary in plan.summaries.items()}
    for name, summary in summaries.items():
        summary["texts_cut_to_limit"] = sum(part.get(name, 0) for part in truncated)
    log.info("content: %s rows for %s campaigns", f"{rows:,}", len(summaries))
    return summaries


def assign_variants(
    settings: Settings, ctx: RunContext, models: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The whole variants stage in this process, shard after shard (the flow runs the shards as tasks)."""
    plan = allocate_campaigns.fn(settings, ctx, models)
    truncated = [render_shard.fn(settings, shard) for shard in plan.shards]
    return store_content.fn(settings, ctx, plan, truncated)
