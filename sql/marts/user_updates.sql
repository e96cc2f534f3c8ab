-- The incremental user feed: every user's payload with UPDATED_AT, which moves to this run's cutoff only
-- when the payload differs from the one the last earlier run published (meta.user_update_history), so a
-- campaign system that syncs "rows updated since last time" receives only changed users.
with tonight as (
    select user_id, payload, md5(payload) as payload_md5, channels, campaign_purposes, needs_profiling
    from marts.user_update_payloads
),

previous as (
    select user_id, payload_md5, updated_at
    from meta.user_update_history
    where run_date < $run_date
    qualify row_number() over (partition by user_id order by run_date desc) = 1
),

final as (
    select
        -- keys
        $run_date as run_date,
        tonight.user_id,
        -- feed
        case
            when previous.payload_md5 = tonight.payload_md5 then previous.updated_at
            else $updated_at
        end as updated_at,
        tonight.payload,
        tonight.payload_md5,
        -- consent context (not published)
        tonight.channels,
        tonight.campaign_purposes,
        tonight.needs_profiling
    from tonight
    left join previous using (user_id)
)

select * from final
