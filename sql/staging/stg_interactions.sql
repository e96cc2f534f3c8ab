-- Behavioural events before the cutoff, exact duplicates (the same event in two files) removed,
-- each with the graded relevance the ranker learns from.
with source as (
    select * from raw.interactions
    where coalesce(_file_date < $run_date, true)
        and occurred_at < $cutoff
),

deduplicated as (
    select distinct
        user_id,
        item_id,
        lower(trim(event_type)) as event_type,
        occurred_at,
        value
    from source
    where user_id is not null and item_id is not null
),

final as (
    select
        -- ids
        user_id,
        item_id,
        -- event
        event_type,
        case event_type
            when 'purchase' then 4
            when 'add_to_cart' then 3
            when 'click' then 2
            when 'rating' then 2
            else 1
        end as relevance,
        value,
        -- timestamps
        occurred_at
    from deduplicated
)

select * from final
