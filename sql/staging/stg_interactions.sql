-- Behavioural events before the cutoff, exact duplicates (the same event in two files) removed,
-- each with the graded relevance the ranker learns from.
-- Returns and cancellations net out: a purchase line with a negative quantity is a 'return', not a
-- purchase, and a return's quantity and value are negative whatever sign the source gave them, so a sum
-- over purchases and returns is net units and net revenue. Sources without order columns read NULL there.
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
        value,
        order_id,
        quantity,
        unit_price_cents,
        channel
    from source
    where user_id is not null and item_id is not null
),

classified as (
    select
        *,
        coalesce(event_type = 'return' or (event_type = 'purchase' and quantity < 0), false) as is_return,
        -- a line without its amount is worth its units at their price
        coalesce(value, quantity * unit_price_cents) as line_value
    from deduplicated
),

final as (
    select
        -- ids
        user_id,
        item_id,
        order_id,
        -- event
        case when is_return then 'return' else event_type end as event_type,
        case
            when is_return then 1  -- the user cared enough to buy, then did not want it: no more than a view
            when event_type = 'purchase' then 4
            when event_type = 'add_to_cart' then 3
            when event_type = 'click' then 2
            when event_type = 'rating' then 2
            else 1
        end as relevance,
        channel,
        -- numerics
        case
            when is_return then -abs(line_value)
            when event_type = 'purchase' then line_value
            else value
        end as value,
        case when is_return then -abs(quantity) else quantity end as quantity,
        unit_price_cents,
        -- timestamps
        occurred_at
    from classified
)

select * from final
