-- Tonight's attributes per user for a campaign system's user profile (Braze cloud data ingestion): the
-- top recommended item ids, RFM segment and propensity decile (profiling consent only) and the variant of
-- each active campaign. Keys are spelled in a fixed order so the same facts give the same JSON text.
with recommended as (
    select user_id, list(item_id order by rank) as item_ids, bool_or(is_personalized) as is_personalized,
        any_value(channels) as channels
    from marts.recommendations
    group by user_id
),

campaigns as (
    select user_id,
        map_from_entries(list(struct_pack(k := campaign_id, v := variant_id) order by campaign_id)) as variants,
        string_agg(distinct consent_purpose, ',' order by consent_purpose) as campaign_purposes,
        bool_or(is_personalized) as is_personalized
    from marts.content
    group by user_id
),

users as (
    select user_id from recommended
    union
    select user_id from campaigns
),

final as (
    select
        users.user_id,
        to_json(struct_pack(
            recommended_item_ids := coalesce(recommended.item_ids, []),
            rfm_segment := segments.rfm_segment,
            propensity_decile := scores.propensity_decile,
            campaign_variants := coalesce(campaigns.variants, map())
        )) as payload,
        -- what the payload needs consent for (checked at publish, never published)
        recommended.channels,
        coalesce(campaigns.campaign_purposes, '') as campaign_purposes,
        segments.user_id is not null
            or scores.user_id is not null
            or coalesce(recommended.is_personalized, false)
            or coalesce(campaigns.is_personalized, false) as needs_profiling
    from users
    left join recommended using (user_id)
    left join campaigns using (user_id)
    left join marts.segments as segments using (user_id)
    left join marts.user_scores as scores using (user_id)
)

select * from final
