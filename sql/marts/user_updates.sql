-- Braze's user feed, incrementally: only the users whose payload changed enough since what Braze holds (see
-- features/braze_held_payloads), each with this publication's UPDATED_AT ($updated_at, later than anything
-- published before). `braze_ids` maps tonight's users to the id Braze knows them by (the published
-- EXTERNAL_ID: the pseudonym, or the id itself when user_updates is published with external ids). A night
-- with nothing changed has no rows. Users who leave go to marts.user_deletes, not here.
--
-- "Enough" (publish.braze): the segment or a campaign variant changed; the decile moved by at least
-- $decile_min_move; more than $changed_share of the recommended items Braze holds are gone from tonight's
-- list, or one of them can no longer be recommended (it is not among the user's candidates at $cutoff:
-- bought, no longer live; a user without candidates has every gone item counted so); the list got longer.
-- Tonight's payload is compared with the one Braze holds, not last night's, so small moves never add up.
with tonight as (
    select
        payloads.user_id,
        ids.external_id,
        payloads.payload,
        md5(payloads.payload) as payload_md5,
        payloads.channels,
        payloads.campaign_purposes,
        payloads.needs_profiling
    from marts.user_update_payloads as payloads
    inner join braze_ids as ids using (user_id)
),

compared as (
    select
        tonight.*,
        held.now_md5,
        held.before_md5,
        held.before_payload,
        json_transform(payload -> '$.recommended_item_ids', '["VARCHAR"]') as tonight_items,
        json_transform(held.before_payload -> '$.recommended_item_ids', '["VARCHAR"]') as held_items
    from tonight
    left join braze_held as held using (external_id)
),

gone_items as (
    select user_id, unnest(list_filter(held_items, lambda item: not list_contains(tonight_items, item))) as item_id
    from compared
    where before_payload is not null
),

users_candidates as (
    select user_id, item_id
    from features.candidates
    where cutoff = $cutoff
),

ineligible as (
    select distinct gone_items.user_id
    from gone_items
    left join users_candidates using (user_id, item_id)
    where users_candidates.item_id is null
),

material as (
    select
        compared.*,
        case
            when before_md5 is null then true  -- new to Braze, or deleted before this night
            when before_md5 = payload_md5 then false
            when before_payload is null then true  -- only the hash is known: compare exactly
            else (payload ->> '$.rfm_segment') is distinct from (before_payload ->> '$.rfm_segment')
                or (payload -> '$.campaign_variants')::varchar
                    is distinct from (before_payload -> '$.campaign_variants')::varchar
                or coalesce(
                    abs((payload ->> '$.propensity_decile')::bigint
                        - (before_payload ->> '$.propensity_decile')::bigint) >= $decile_min_move,
                    (payload ->> '$.propensity_decile') is distinct from
                        (before_payload ->> '$.propensity_decile')
                )
                or len(tonight_items) > len(held_items)
                or len(list_filter(held_items, lambda item: not list_contains(tonight_items, item)))
                    > $changed_share * len(held_items)
                or ineligible.user_id is not null
        end as is_material
    from compared
    left join ineligible using (user_id)
),

changed as (
    select *
    from material
    -- what Braze held before the night differs enough, or an earlier run of the night sent Braze a payload
    -- that tonight's is not
    where is_material or (now_md5 is distinct from before_md5 and now_md5 is distinct from payload_md5)
),

final as (
    select
        -- keys
        $run_date::date as run_date,
        user_id,
        external_id,
        -- feed
        $updated_at::timestamp as updated_at,
        payload,
        payload_md5,
        -- consent context (not published)
        channels,
        campaign_purposes,
        needs_profiling
    from changed
)

select * from final
