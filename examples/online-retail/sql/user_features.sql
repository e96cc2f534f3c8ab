-- What a retailer knows about a customer beyond Tailor's 90-day behaviour, as of $cutoff: a year of
-- spend and orders, how long they have bought here, how much they send back, and how big their baskets
-- are (wholesalers order large baskets every few months). Only lines before the cutoff are read.
with lines as (
    select user_id, event_type, value, quantity, order_id, occurred_at
    from staging.stg_interactions
    where occurred_at < $cutoff
),

customers as (
    select
        user_id,
        coalesce(sum(value) filter (where occurred_at >= $cutoff - interval 365 day), 0) as spend_365d_cents,
        count(distinct order_id) filter (
            where event_type = 'purchase' and occurred_at >= $cutoff - interval 365 day
        ) as orders_365d,
        date_diff('day', min(occurred_at), $cutoff) as days_since_first_order,
        count(*) filter (where event_type = 'return') / count(*) as return_line_share,
        count(*) filter (where event_type = 'purchase') / greatest(count(distinct order_id), 1) as lines_per_order
    from lines
    group by user_id
),

final as (
    select * from customers
)

select * from final
