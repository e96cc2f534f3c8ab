-- How much of the business is buying again: of the purchases in the $repeat_history_days before $cutoff
-- (one per user, item and day), the share that repeat an item the same user bought on an earlier day.
-- Groceries and supplies sit near or above a half; films and one-off goods near zero.
with purchases as (
    select user_id, item_id, purchased_on
    from staging.stg_purchase_days
    where first_purchased_at < $cutoff
        and last_purchased_at >= $cutoff - to_days(cast($repeat_history_days as integer))
),

numbered as (
    select
        *,
        row_number() over (partition by user_id, item_id order by purchased_on) as nth_purchase
    from purchases
),

final as (
    select
        count(*) as n_purchases,
        count(*) filter (where nth_purchase > 1) as n_repeat_purchases,
        coalesce(count(*) filter (where nth_purchase > 1) / nullif(count(*), 0), 0.0) as repeat_share
    from numbered
)

select * from final
