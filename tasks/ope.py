"""Policy evaluation: from each campaign's logged sends in the experiment window, estimate what other
allocation policies would have earned per send (tailor/ope.py: IPW, self-normalised IPW, doubly robust, each
with a bootstrap interval and its effective sample size). docs/ope.md says what the estimates assume.

Candidate policies: each approved variant sent to everyone (`variant:<id>`), the personalized policy as
tonight's uplift gate would run it (`personalized`: the variant of highest predicted uplift where a model is
proven, else the best single variant, with the exploration share uniform; valued only on the sends of the
uplift evaluation's test part, which its models never learned from), the context-free bandit
(Thompson shares from tonight's posteriors), the contextual bandit (per-context posteriors, cross-fitted:
each half of the users is valued under the policy learned from the other half's sends) and the policy as
logged (weights of 1: the on-policy mean, a check on the others). One more row, `contextual_bandit -
bandit`, is the paired difference of the two bandits' self-normalised estimates, the evidence the contextual
bandit must clear before it serves (tasks/variants.py).

A send's logging propensity is the exposure's `propensity` when the company logs it; otherwise what the
allocation gave the arm: the holdout share for the holdout, and for a variant the rest times its share of
the split's weights (a split campaign) or of that day's bandit shares in meta.allocation_decisions. A
personalized or contextual day logs no per-user propensity, so its sends need the exposure's own.

Table (warehouse): meta.policy_evaluation, one row per run date, campaign, policy, estimator and metric
(published as policy_evaluation); a rerun of a date replaces its rows.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import duckdb
import numpy as np
import polars as pl

from tailor import bandit, ope, uplift
from tailor.config import CampaignConfig, Settings
from tailor.sql import ensure_table, query, replace_run_rows, table_exists
from tailor.warehouse import RunContext

log = logging.getLogger(__name__)

POLICY_COLUMNS = {
    "run_date": "date", "campaign_id": "varchar", "policy": "varchar", "estimator": "varchar",
    "metric": "varchar", "value": "double", "ci_low": "double", "ci_high": "double",
    "effective_sample_size": "double", "logged_rows": "bigint", "reason": "varchar",
}  # fmt: skip
# per send: a conversion (0/1) and the revenue it brought, in cents
OPE_METRICS = {"conversion_rate": "is_converted", "revenue_per_send": "revenue_cents"}
BANDIT, CONTEXTUAL, AS_LOGGED, PERSONALIZED = "bandit", "contextual_bandit", "as_logged", "personalized"
DIFFERENCE = f"{CONTEXTUAL} - {BANDIT}"
# the decision log's shares are propensities only for policies that give every user the same chances
SHARED_CHANCE_POLICIES = ("split", "bandit")


def logged_sends(
    con: duckdb.DuckDBPyConnection, campaign_id: str, settings: Settings, ctx: RunContext, start: datetime
) -> pl.DataFrame:
    """The campaign's sends from `start` to the cutoff with outcomes, logged propensity, the decision log's
    share that day, and the user's contexts (segment: the RFM segment at the cutoff, 'unknown' where the
    cutoff's user features are not built)."""
    sends = query(
        con,
        "marts/logged_sends",
        {"campaign_id": campaign_id, "window_start": start, "cutoff": ctx.cutoff, "cutoff_day": ctx.run_date},
    ).pl()
    segments = cutoff_segments(con, settings, ctx)
    if segments is not None:
        sends = sends.join(segments, on="user_id", how="left", maintain_order="left")
    else:
        sends = sends.with_columns(pl.lit(None, pl.Utf8).alias("segment"))
    return sends.with_columns(pl.col("segment").fill_null("unknown"))


def cutoff_segments(con: duckdb.DuckDBPyConnection, settings: Settings, ctx: RunContext) -> pl.DataFrame | None:
    """Each user's RFM segment at the cutoff, computed by the segments' own SQL from the cutoff's features,
    not read from marts.segments: that table is whichever night last built it, so a rerun would see other
    segments than the first run did."""
    from tailor.tasks.segments import rule_params  # here: tasks/segments.py imports scoring, which is heavier

    if not table_exists(con, "features.user_features"):
        return None
    params = {"run_date": ctx.run_date, "cutoff": ctx.cutoff, **rule_params(settings)}
    # the segments' SQL joins tonight's clusters, which the RFM segment does not depend on and which the
    # segments stage has not learned yet when the experiments run: an empty stand-in, rolled back after
    con.execute("begin transaction")
    try:
        con.execute("create schema if not exists model")
        con.execute(
            "create table if not exists model.user_clusters (user_id varchar, cluster_id bigint, cluster_name varchar)"
        )
        segments = query(con, "marts/segments", params).pl()
    finally:
        con.execute("rollback")
    return segments.select("user_id", pl.col("rfm_segment").alias("segment")) if segments.height else None


def logging_propensity(sends: pl.DataFrame, campaign: CampaignConfig) -> np.ndarray:
    """Each send's probability under the policy that logged it (NaN where nothing says)."""
    holdout = campaign.holdout_share
    weights = {variant.variant_id: variant.weight for variant in campaign.approved_variants}
    total = sum(weights.values())
    split = {variant: (1 - holdout) * weight / total for variant, weight in weights.items()}
    out = np.full(sends.height, np.nan)
    rows = zip(sends["variant_id"], sends["is_holdout"], sends["logged_propensity"], sends["decision_policy"],
               sends["decision_share"], strict=True)  # fmt: skip
    for index, (variant, is_holdout, logged, policy, share) in enumerate(rows):
        if logged is not None:
            out[index] = logged
        elif campaign.allocation.policy == "split":
            out[index] = holdout if is_holdout else split.get(variant, math.nan)
        elif policy in SHARED_CHANCE_POLICIES and (is_holdout or share):
            # the holdout draw comes before the policy; the decision log's share is among contacted users
            out[index] = holdout if is_holdout else (1 - holdout) * share
    return out


def fold_of(user_ids: pl.Series, seed: int) -> np.ndarray:
    """0 or 1 per user, from a seeded hash: the same user is always in the same half."""
    return np.array(
        [hashlib.md5(f"{seed}|{user}".encode()).digest()[0] % 2 for user in user_ids.to_list()],
        dtype=np.int64,
    )


def context_evidence(sends: pl.DataFrame, context: str) -> pl.DataFrame:
    """Sends and conversions per context and variant (holdout excluded): the contextual bandit's evidence."""
    return (
        sends.filter(~pl.col("is_holdout"))
        .group_by(pl.col(context).alias("context"), "variant_id")
        .agg(pl.len().alias("sends"), pl.col("is_converted").sum().alias("conversions"))
        .sort("context", "variant_id")
    )


def contextual_matrix(
    contexts: list[str], shares: Mapping[str, np.ndarray], pooled_shares: np.ndarray, actions: int
) -> np.ndarray:
    """Rows x actions: each row's context's shares over the variants (the first columns), the pooled shares
    for a context the policy never saw, zero for the holdout and other logged arms."""
    variants = pooled_shares.size
    matrix = np.zeros((len(contexts), actions))
    for row, context in enumerate(contexts):
        matrix[row, :variants] = shares.get(context, pooled_shares)
    return matrix


def target_policies(
    sends: pl.DataFrame,
    campaign: CampaignConfig,
    variant_ids: list[str],
    posteriors: Mapping[str, bandit.Posterior],
    actions: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Each candidate policy as a (sends x actions) matrix of its probabilities in each send's context."""
    n = sends.height
    policies = {}
    for index, variant in enumerate(variant_ids):
        only = np.zeros((n, actions))
        only[:, index] = 1.0
        policies[f"variant:{variant}"] = only
    prior = (campaign.allocation.prior_successes, campaign.allocation.prior_failures)
    pooled = {variant: posteriors.get(variant, prior) for variant in variant_ids}
    pooled_shares = bandit.shares_from(
        bandit.chance_best([pooled[v][0] for v in variant_ids], [pooled[v][1] for v in variant_ids], seed)
    )
    policies[BANDIT] = contextual_matrix([""] * n, {}, pooled_shares, actions)
    context = campaign.allocation.context
    folds = fold_of(sends["user_id"], seed)
    contextual = np.zeros((n, actions))
    for fold in (0, 1):
        learned_from = sends.filter(pl.Series(folds != fold))
        fitted = bandit.context_posteriors(
            context_evidence(learned_from, context),
            pooled,
            variant_ids,
            campaign.allocation.context_prior_sends,
        )
        shares = bandit.contextual_shares(fitted, variant_ids, seed)
        rows = np.flatnonzero(folds == fold)
        contextual[rows] = contextual_matrix(
            sends[context].gather(rows).to_list(), shares, pooled_shares, actions
        )
    policies[CONTEXTUAL] = contextual
    return policies


def estimate_rows(
    reward: np.ndarray,
    action: np.ndarray,
    logging: np.ndarray,
    policies: dict[str, np.ndarray],
    contexts: np.ndarray,
    settings: Settings,
) -> list[dict[str, Any]]:
    """IPW, SNIPW and DR of every policy on one metric, and the policy as logged."""
    alpha, samples, seed = (
        settings.experiments.alpha,
        settings.experiments.ope_bootstrap_samples,
        settings.seed,
    )
    actions = next(iter(policies.values())).shape[1]
    per_variant = ope.mean_reward_model(reward, action, np.zeros(reward.size), actions)
    per_context = ope.mean_reward_model(reward, action, contexts, actions)
    rows = []
    for name, target in policies.items():
        model = per_context if name == CONTEXTUAL else per_variant
        estimates = ope.evaluate(reward, action, logging, target, model, alpha, samples, seed)
        rows += [{"policy": name} | estimate_fields(estimate) for estimate in estimates]
    # the logging policy itself: every weight is 1, so each estimator is the mean reward per send
    q_logged = per_variant[np.arange(reward.size), action]
    as_logged = [
        ope.ipw(reward, logging, logging, alpha, samples, seed),
        ope.snipw(reward, logging, logging, alpha, samples, seed),
        ope.doubly_robust(reward, logging, logging, q_logged, q_logged, alpha, samples, seed),
    ]
    return rows + [{"policy": AS_LOGGED} | estimate_fields(estimate) for estimate in as_logged]


def estimate_fields(estimate: ope.Estimate) -> dict[str, Any]:
    def finite(value: float) -> float | None:
        return float(value) if math.isfinite(value) else None

    return {
        "estimator": estimate.estimator,
        "value": finite(estimate.value),
        "ci_low": finite(estimate.boot_low),
        "ci_high": finite(estimate.boot_high),
        "effective_sample_size": estimate.effective_sample_size,
        "logged_rows": estimate.logged_rows,
        "reason": estimate.reason,
    }


def skipped(policies: list[str], logged_rows: int, reason: str) -> list[dict[str, Any]]:
    """The rows of a campaign the logs cannot evaluate: every policy and estimator, with why."""
    nothing = {"value": None, "ci_low": None, "ci_high": None, "effective_sample_size": 0.0,
               "logged_rows": logged_rows, "reason": reason}  # fmt: skip
    rows = [
        {"policy": policy, "estimator": estimator, "metric": metric} | nothing
        for policy in policies
        for metric in OPE_METRICS
        for estimator in ope.ESTIMATORS
    ]
    return [
        *rows,
        {"policy": DIFFERENCE, "estimator": "snipw_difference", "metric": "conversion_rate"} | nothing,
    ]


def evaluate_policies(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    settings: Settings,
    ctx: RunContext,
    start: datetime,
    posterior_rows: list[dict[str, Any]],
    test_units: pl.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """The campaign's rows of meta.policy_evaluation: every candidate policy's value per send from the sends
    since `start`, given tonight's rows of meta.variant_posteriors (the bandit's pooled posteriors).
    `test_units`: the test part of tonight's uplift units (UpliftUnits.test), when the caller has it."""
    posteriors = {
        row["variant_id"]: (row["alpha"], row["beta"])
        for row in posterior_rows
        if row["campaign_id"] == campaign.campaign_id
    }
    variant_ids = [variant.variant_id for variant in campaign.approved_variants]
    names = [f"variant:{v}" for v in variant_ids] + [PERSONALIZED, BANDIT, CONTEXTUAL, AS_LOGGED]
    key = {"run_date": ctx.run_date, "campaign_id": campaign.campaign_id}
    sends = logged_sends(con, campaign.campaign_id, settings, ctx, start)
    propensity = logging_propensity(sends, campaign)
    known = np.isfinite(propensity)
    reason = None
    if sends.height < 2:
        reason = f"not enough data: {sends.height} logged send(s) in the window"
    elif not known.any():
        reason = (
            f"no logging propensity for any of {sends.height:,} sends: the exposures carry no `propensity` and "
            f"the allocation ({campaign.allocation.policy}) logged no share every user had"
        )
    if reason is not None:
        log.info("policy evaluation of %s skipped: %s", campaign.campaign_id, reason)
        return [key | row for row in skipped(names, sends.height, reason)]
    note = None
    if not known.all():
        note = f"{int((~known).sum()):,} of {sends.height:,} sends without a logging propensity left out"
        sends, propensity = sends.filter(pl.Series(known)), propensity[known]
    other_arms = sorted(set(sends["variant_id"].unique().to_list()) - set(variant_ids))
    arms = {arm: index for index, arm in enumerate(variant_ids + other_arms)}
    action = np.array([arms[v] for v in sends["variant_id"].to_list()], dtype=np.int64)
    policies = target_policies(sends, campaign, variant_ids, posteriors, len(arms), settings.seed)
    contexts = sends[campaign.allocation.context].to_numpy()
    rows = []
    for metric, column in OPE_METRICS.items():
        reward = sends[column].cast(pl.Float64).to_numpy()
        rows += [row | {"metric": metric} for row in estimate_rows(reward, action, propensity, policies, contexts,
                                                                   settings)]  # fmt: skip
    arms_count = len(arms)
    rows += personalized_rows(
        con, campaign, settings, ctx, start, posteriors, sends, action, propensity, contexts, arms_count, test_units
    )
    conversion = sends["is_converted"].cast(pl.Float64).to_numpy()
    rows_index = np.arange(action.size)
    difference = ope.snipw_difference(
        conversion, policies[CONTEXTUAL][rows_index, action], policies[BANDIT][rows_index, action], propensity,
        settings.experiments.alpha, settings.experiments.ope_bootstrap_samples, settings.seed,
    )  # fmt: skip
    rows.append({"policy": DIFFERENCE, "metric": "conversion_rate"} | estimate_fields(difference))
    return [key | row for row in with_note(rows, note)]


def personalized_rows(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    settings: Settings,
    ctx: RunContext,
    start: datetime,
    posteriors: Mapping[str, bandit.Posterior],
    sends: pl.DataFrame,
    action: np.ndarray,
    propensity: np.ndarray,
    contexts: np.ndarray,
    actions: int,
    test_units: pl.DataFrame | None = None,
) -> list[dict[str, Any]]:
    """The personalized policy's rows: its probabilities on the sends it can be valued on honestly (those of
    the uplift evaluation's test part: profiled users its models never learned from), each estimator."""
    target, valued, note = personalized_policy(
        con, campaign, settings, ctx, start, posteriors, sends, actions, test_units
    )
    if valued.sum() < 2:
        rows = skipped([PERSONALIZED], int(valued.sum()), f"not enough data: {note}")
        return [row for row in rows if row["policy"] == PERSONALIZED]
    rows = []
    for metric, column in OPE_METRICS.items():
        reward = sends[column].cast(pl.Float64).to_numpy()
        estimated = estimate_rows(
            reward[valued], action[valued], propensity[valued], {PERSONALIZED: target[valued]}, contexts[valued],
            settings,
        )  # fmt: skip
        rows += [row | {"metric": metric} for row in estimated if row["policy"] == PERSONALIZED]
    return with_note(rows, note)


def with_note(rows: list[dict[str, Any]], note: str | None) -> list[dict[str, Any]]:
    """The rows with `note` added to their reason."""
    return [row | {"reason": "; ".join(filter(None, [row["reason"], note]))} for row in rows] if note else rows


def personalized_policy(
    con: duckdb.DuckDBPyConnection,
    campaign: CampaignConfig,
    settings: Settings,
    ctx: RunContext,
    start: datetime,
    posteriors: Mapping[str, bandit.Posterior],
    sends: pl.DataFrame,
    actions: int,
    test_units: pl.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """(sends x actions) probabilities of the personalized policy under tonight's uplift gate, which sends it
    is valued on, and how it chose. `test_units`: the uplift units' test part, built here when not given."""
    # imported here: tasks/experiments.py imports this module
    from tailor.tasks import experiments

    variant_ids = [variant.variant_id for variant in campaign.approved_variants]
    gate = experiments.uplift_gate(con, campaign, ctx).only(variant_ids)
    target = np.zeros((sends.height, actions))
    valued = np.zeros(sends.height, dtype=bool)
    if test_units is not None and test_units.height and gate.models:
        test = test_units
    else:
        # the models need each send's features; the best single variant needs only who and when
        examples = experiments.uplift_examples(con, campaign, settings, ctx, start) if gate.models else sends
        if examples.height == 0:
            return target, valued, "no send of a user with profiling consent"
        test = examples.filter(pl.Series(experiments.split_parts(examples, settings, ctx) == uplift.TEST))
    scores = experiments.gated_scores(gate, test)
    if scores:
        # as the allocation does: an evaluated variant without a proven model counts at its average effect
        scores |= {v: np.full(test.height, e) for v, e in gate.average_effect.items() if v not in scores}
        names = list(scores)
        chosen = np.asarray(names, dtype=object)[np.column_stack([scores[v] for v in names]).argmax(axis=1)]
        how = f"uplift models of {', '.join(sorted(gate.models))} proven"
    else:
        prior = (campaign.allocation.prior_successes, campaign.allocation.prior_failures)
        single = experiments.best_single_variant({v: posteriors.get(v, prior) for v in variant_ids})
        chosen = np.full(test.height, single, dtype=object)
        how = f"no uplift model proven: the best single variant ({single}) for everyone"
    picks = test.select("user_id", "sent_at").with_columns(chosen=pl.Series(chosen.tolist(), dtype=pl.String))
    matched = sends.select("user_id", "sent_at").join(picks, on=["user_id", "sent_at"], how="left",
                                                      maintain_order="left")["chosen"].to_list()  # fmt: skip
    explore = campaign.allocation.exploration_share
    index = {v: i for i, v in enumerate(variant_ids)}
    for row, variant in enumerate(matched):
        if variant is None or variant not in index:
            continue
        valued[row] = True
        target[row, : len(variant_ids)] = explore / len(variant_ids)
        target[row, index[variant]] += 1 - explore
    note = f"valued on the {int(valued.sum()):,} sends of the uplift evaluation's test users ({how})"
    return target, valued, note


def ensure_policy_table(con: duckdb.DuckDBPyConnection) -> None:
    ensure_table(con, "meta.policy_evaluation", POLICY_COLUMNS)


def store_policy_evaluation(
    con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], ctx: RunContext
) -> None:
    ensure_policy_table(con)
    replace_run_rows(con, "meta.policy_evaluation", POLICY_COLUMNS, rows, ctx.run_date)


def contextual_verdict(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext
) -> tuple[bool, str]:
    """Whether the contextual bandit may serve tonight, and why: tonight's evaluation must put the lower
    bound of its conversion rate per send minus the context-free bandit's above -contextual_tolerance."""
    ensure_policy_table(con)
    found = con.execute(
        "select value, ci_low, ci_high, logged_rows, reason from meta.policy_evaluation "
        "where run_date = $run_date and campaign_id = $campaign_id and policy = $policy and metric = 'conversion_rate'",
        {"run_date": ctx.run_date, "campaign_id": campaign.campaign_id, "policy": DIFFERENCE},
    ).fetchall()
    tolerance = campaign.allocation.contextual_tolerance
    if not found:
        return (
            False,
            "contextual bandit not evaluated off-policy tonight (no policy evaluation of the campaign)",
        )
    value, low, high, logged_rows, reason = found[0]
    if value is None or low is None:
        return False, f"contextual bandit not evaluated off-policy: {reason}"
    figures = (
        f"conversion per send {value * 100:+.2f} points against the context-free bandit "
        f"({low * 100:+.2f} to {high * 100:+.2f}, self-normalised IPW on {logged_rows:,} sends)"
    )
    if low > -tolerance:
        return True, f"contextual bandit serves: {figures}, lower bound above -{tolerance * 100:.2f} points"
    return False, (
        f"contextual bandit not better off-policy: {figures}; it serves once the lower bound clears "
        f"-{tolerance * 100:.2f} points"
    )
