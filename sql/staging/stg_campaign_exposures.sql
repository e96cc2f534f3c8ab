-- Campaign sends before the cutoff, every reported version of each (campaign, user, send): outcomes
-- are reported days after the send and may be restated. `known_on` is the day a version became known;
-- features take the newest version known at their cutoff, analyses the latest (`is_latest`).
with source as (
    select *
    from raw.campaign_exposures
    where coalesce(_file_date < $run_date, true)
        and sent_at < $cutoff
        and campaign_id is not null
        and user_id is not null
),

versions as (
    select
        *,
        coalesce(_file_date, _loaded_run_date - 1) as known_on,
        row_number() over (
            partition by campaign_id, user_id, sent_at, coalesce(_file_date, _loaded_run_date - 1)
            order by _source_file desc
        ) as rank_within_day
    from source
),

final as (
    select
        -- ids
        campaign_id,
        variant_id,
        user_id,
        -- timestamps
        sent_at,
        opened_at,
        clicked_at,
        converted_at,
        known_on,
        -- flags
        variant_id = 'holdout' as is_holdout,
        converted_at is not null as is_converted,
        row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1 as is_latest,
        -- numerics
        coalesce(revenue_cents, 0) as revenue_cents,
        position,  -- the slot, 1 = first (null: not given)
        propensity  -- the logging policy's probability of the variant sent (null: not given)
    from versions
    where rank_within_day = 1
)

select * from final
