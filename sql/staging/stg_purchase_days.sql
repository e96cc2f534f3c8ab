-- One row per user, item and day with a purchase: the unit repeat purchase is counted in (a basket that
-- holds an item on three lines, or two orders of it in a day, is one purchase day). The day's first and
-- last purchase times let a feature window keep exactly the days with a purchase inside it.
with purchases as (
    select user_id, item_id, occurred_at
    from staging.stg_interactions
    where event_type = 'purchase'
),

final as (
    select
        user_id,
        item_id,
        cast(occurred_at as date) as purchased_on,
        min(occurred_at) as first_purchased_at,
        max(occurred_at) as last_purchased_at
    from purchases
    group by user_id, item_id, cast(occurred_at as date)
)

select * from final
