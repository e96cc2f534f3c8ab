"""Variants: assign each consented user one arm (holdout or a variant) of every active campaign, and
render that variant's subject and headline for the user from Jinja2 templates.

Templates run in Jinja2's sandbox and see only what a message may say: the user's country and
language, the campaign, and the user's top recommended items (none for users without profiling
consent, whose recommendations do not exist).
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import duckdb
import polars as pl
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from prefect import task
from prefect.cache_policies import NO_CACHE

from tailor.config import CampaignConfig, Settings
from tailor.sql import materialize_partition, query
from tailor.warehouse import RunContext, connect
from tasks.score import replace_table

ITEMS_IN_CONTEXT = 3


class TemplateRenderError(ValueError):
    """A campaign template that cannot be rendered; names the campaign, variant and field."""


def arm_bounds(campaign: CampaignConfig) -> tuple[list[str], list[float], list[float]]:
    """Variant ids and their [lower, upper) share of the unit interval, proportional to weights."""
    total = sum(v.weight for v in campaign.variants)
    uppers = [edge / total for edge in accumulate(v.weight for v in campaign.variants)]
    uppers[-1] = 1.0 + 1e-9  # draws are < 1; keep the last arm closed against rounding
    lowers = [0.0, *uppers[:-1]]
    return [v.variant_id for v in campaign.variants], lowers, uppers


def assign_campaign(con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext) -> int:
    ids, lowers, uppers = arm_bounds(campaign)
    return materialize_partition(
        con,
        "marts/mart_campaign_assignments",
        "campaign_id",
        {
            "run_date": ctx.run_date,
            "campaign_id": campaign.campaign_id,
            "channel": campaign.channel,
            "consent_purpose": campaign.required_consent,
            "salt": campaign.salt,
            "holdout_share": campaign.holdout_share,
            "variant_ids": ids,
            "lower_bounds": lowers,
            "upper_bounds": uppers,
        },
    )


def compile_templates(campaign: CampaignConfig) -> dict[str, dict[str, Any]]:
    environment = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    compiled = {}
    for variant in campaign.variants:
        fields = {}
        for name in ("subject", "headline"):
            try:
                fields[name] = environment.from_string(getattr(variant, name))
            except TemplateError as error:
                raise TemplateRenderError(
                    f"campaign {campaign.campaign_id}, variant {variant.variant_id}, {name}: {error}"
                ) from None
        compiled[variant.variant_id] = fields
    return compiled


def render_campaign(
    con: duckdb.DuckDBPyConnection, campaign: CampaignConfig, ctx: RunContext
) -> pl.DataFrame:
    templates = compile_templates(campaign)
    rows = query(
        con,
        "marts/campaign_render_context",
        {"campaign_id": campaign.campaign_id, "items_in_context": ITEMS_IN_CONTEXT},
    ).fetchall()
    subjects, headlines, item_ids = [], [], []
    campaign_context = {"id": campaign.campaign_id, "channel": campaign.channel}
    for _user_id, variant_id, is_holdout, country, language, items in rows:
        items = items or []
        if is_holdout:  # the holdout gets no message and no items: it measures "no contact"
            subjects.append(None)
            headlines.append(None)
            item_ids.append(None)
            continue
        item_ids.append(",".join(item["item_id"] for item in items))
        context = {
            "user": {"country": country, "language": language},
            "items": items,
            "campaign": campaign_context,
        }
        try:
            subjects.append(templates[variant_id]["subject"].render(context))
            headlines.append(templates[variant_id]["headline"].render(context))
        except TemplateError as error:
            raise TemplateRenderError(
                f"campaign {campaign.campaign_id}, variant {variant_id}: template failed for a user: {error}"
            ) from None
    return pl.DataFrame(
        {
            "run_date": [ctx.run_date] * len(rows),
            "campaign_id": [campaign.campaign_id] * len(rows),
            "channel": [campaign.channel] * len(rows),
            "consent_purpose": [campaign.required_consent] * len(rows),
            "user_id": [row[0] for row in rows],
            "variant_id": [row[1] for row in rows],
            "is_holdout": [row[2] for row in rows],
            "subject": subjects,
            "headline": headlines,
            "recommended_item_ids": item_ids,
        },
        schema_overrides={"subject": pl.Utf8, "headline": pl.Utf8, "recommended_item_ids": pl.Utf8},
    )


@task(name="variants", cache_policy=NO_CACHE)
def assign_variants(settings: Settings, ctx: RunContext) -> dict[str, dict[str, int]]:
    """Assign and render every campaign active on the run date; returns users per arm per campaign."""
    active = [campaign for campaign in settings.campaigns if campaign.is_active(ctx.run_date)]
    with connect(settings) as con:
        con.execute("drop table if exists marts.mart_campaign_assignments")
        frames = []
        for campaign in active:
            assign_campaign(con, campaign, ctx)
            frames.append(render_campaign(con, campaign, ctx))
        content = pl.concat(frames) if frames else pl.DataFrame(
            schema={
                "run_date": pl.Date, "campaign_id": pl.Utf8, "channel": pl.Utf8, "consent_purpose": pl.Utf8,
                "user_id": pl.Utf8, "variant_id": pl.Utf8, "is_holdout": pl.Boolean, "subject": pl.Utf8,
                "headline": pl.Utf8, "recommended_item_ids": pl.Utf8,
            }
        )  # fmt: skip
        con.execute("create schema if not exists marts")
        replace_table(con, "marts.mart_campaign_content", content.to_arrow())
    arms: dict[str, dict[str, int]] = {}
    for (campaign_id, variant_id), group in content.group_by("campaign_id", "variant_id"):
        arms.setdefault(str(campaign_id), {})[str(variant_id)] = group.height
    return {campaign: dict(sorted(counts.items())) for campaign, counts in sorted(arms.items())}
