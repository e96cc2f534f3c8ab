from __future__ import annotations

import pytest

from tailor.config import CampaignConfig, VariantConfig
from tailor.warehouse import connect
from tasks.score import score_users
from tasks.variants import TemplateRenderError, arm_bounds, assign_variants, compile_templates


def campaign(**overrides) -> CampaignConfig:
    data = {
        "campaign_id": "c1",
        "channel": "email",
        "variants": [
            VariantConfig(variant_id="a", weight=1, subject="A {{ user.country }}"),
            VariantConfig(variant_id="b", weight=3, subject="B {{ items[0].title if items else '-' }}"),
        ],
    } | overrides
    return CampaignConfig(**data)


def test_arm_bounds_follow_weights() -> None:
    ids, lowers, uppers = arm_bounds(campaign())
    assert ids == ["a", "b"] and lowers == [0.0, 0.25] and uppers[0] == 0.25 and uppers[1] > 1.0


def test_template_errors_name_campaign_variant_and_field() -> None:
    broken = campaign(variants=[VariantConfig(variant_id="x", subject="{{ user.country ")])
    with pytest.raises(TemplateRenderError, match="campaign c1, variant x, subject"):
        compile_templates(broken)


def test_assignment_is_deterministic_consented_and_rendered(trained_company) -> None:
    settings, ctx, models, _ = trained_company
    score_users.fn(settings, ctx, models)
    first = assign_variants.fn(settings, ctx)
    with connect(settings) as con:
        snapshot = con.execute("select * from marts.mart_campaign_content order by all").fetchall()
    assert assign_variants.fn(settings, ctx) == first
    with connect(settings) as con:
        assert con.execute("select * from marts.mart_campaign_content order by all").fetchall() == snapshot
        rows = con.execute(
            """
            select campaign_id, count(*), avg(is_holdout::int),
                   count(*) filter (where is_holdout and (subject is not null or recommended_item_ids is not null)),
                   count(*) filter (where not is_holdout and (subject is null or subject = ''))
            from marts.mart_campaign_content group by campaign_id order by campaign_id
            """
        ).fetchall()
        unconsented = con.execute(
            """
            select count(*) from marts.mart_campaign_content c anti join (
                select user_id, purpose from staging.stg_consents where is_latest and is_granted
            ) g on g.user_id = c.user_id and g.purpose = c.consent_purpose
            """
        ).fetchall()[0][0]
        personalised = con.execute(
            "select count(*) from marts.mart_campaign_content where subject like 'Only a few left: %' "
            "and subject <> 'Only a few left: our bestsellers'"
        ).fetchall()[0][0]
    assert [r[0] for r in rows] == ["app_nudge", "weekly_digest"]
    for _, users, holdout_share, holdout_with_message, missing_message in rows:
        assert users > 100 and abs(holdout_share - 0.1) < 0.05
        assert holdout_with_message == 0 and missing_message == 0
    assert unconsented == 0
    assert personalised > 0
    assert set(first["weekly_digest"]) == {"discount", "editorial", "new_arrivals", "holdout"}
