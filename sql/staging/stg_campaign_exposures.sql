-- Campaign sends before the cutoff with their outcomes, one row per campaign, user and send.
-- A restated send (a later file reporting new outcomes) replaces the earlier row.
with source as (
    select * from raw.campaign_exposures
    where coalesce(_file_date < $run_date, true)
        and sent_at < $cutoff
),

deduplicated as (
    select
        *,
        row_number() over (
            partition by campaign_id, user_id, sent_at order by _file_date desc nulls last, _source_file desc
        ) as restatement_rank
    from source
    where campaign_id is not null and user_id is not null
),

final as (
    select
        -- ids
        campaign_id,
        variant_id,
        user_id,
        -- timestamps
        sent_at,
        -- the day the row's file was dated: outcomes are reported days after the send, so a feature
        -- at a cutoff may only use rows known by then
        coalesce(_file_date, cast(sent_at as date)) as known_on,
        opened_at,
        clicked_at,
        converted_at,
        -- flags
        variant_id = 'holdout' as is_holdout,
        converted_at is not null as is_converted,
        -- numerics
        coalesce(revenue_cents, 0) as revenue_cents
    from deduplicated
    where restatement_rank = 1
)

select * from final
