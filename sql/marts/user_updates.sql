-- The incremental user feed: every user's payload with UPDATED_AT, which moves to this run's cutoff only
-- when the payload differs from the one the last earlier run published (meta.user_update_history), so a
-- campaign system that syncs "rows updated since last time" receives only changed users. A user who was
-- in the last feed but is not tonight (consent withdrawn) gets one erasure payload, every attribute empty,
-- so the campaign system drops what it holds; the night after, they are gone from the feed.
with tonight as (
    select user_id, payload, md5(payload) as payload_md5, channels, campaign_purposes, needs_profiling
    from marts.user_update_payloads
),

erasure as (
    select to_json(struct_pack(
        recommended_item_ids := []::varchar[],
        rfm_segment := null::varchar,
        propensity_decile := null::bigint,
        campaign_variants := map()::map(varchar, varchar)
    )) as payload
),

previous as (
    select user_id, payload_md5, updated_at
    from meta.user_update_history
    where run_date < $run_date
    qualify row_number() over (partition by user_id order by run_date desc) = 1
),

gone as (
    -- erasure rows need no consent: they carry nothing but the id
    select previous.user_id, erasure.payload, md5(erasure.payload) as payload_md5,
        null::varchar as channels, '' as campaign_purposes, false as needs_profiling
    from previous
    cross join erasure
    anti join tonight using (user_id)
    where previous.payload_md5 <> md5(erasure.payload)
),

feed as (
    select * from tonight
    union all
    select * from gone
),

final as (
    select
        -- keys
        $run_date as run_date,
        feed.user_id,
        -- feed
        case
            when previous.payload_md5 = feed.payload_md5 then previous.updated_at
            else $updated_at
        end as updated_at,
        feed.payload,
        feed.payload_md5,
        -- consent context (not published)
        feed.channels,
        feed.campaign_purposes,
        feed.needs_profiling
    from feed
    left join previous using (user_id)
)

select * from final
