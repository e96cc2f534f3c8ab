-- Per candidate user and item they bought in the $repeat_history_days before $cutoff: how often (purchase
-- days), how recently, their own repurchase interval, and the share of their purchase days that include
-- the item. What "buy again" candidates and the ranker's repurchase features read. Only for
-- features.candidate_users, one bucket of them at a time.
with users as (
    select user_id
    from features.candidate_users
    where cutoff = $cutoff and user_hash % $buckets = $bucket
),

purchases as (
    select user_id, item_id, purchased_on
    from staging.stg_purchase_days
    semi join users using (user_id)
    where first_purchased_at < $cutoff
        and last_purchased_at >= $cutoff - to_days(cast($repeat_history_days as integer))
),

user_days as (
    select user_id, count(distinct purchased_on) as n_purchase_days
    from purchases
    group by user_id
),

per_item as (
    select
        user_id,
        item_id,
        count(*) as n_purchase_days,
        min(purchased_on) as first_purchased_on,
        max(purchased_on) as last_purchased_on
    from purchases
    group by user_id, item_id
),

final as (
    select
        $cutoff as cutoff,
        -- the bucket the row was built in: a later model reading one bucket skips the others' row groups
        cast($bucket as integer) as user_bucket,
        per_item.user_id,
        per_item.item_id,
        per_item.n_purchase_days as n_user_item_purchases,
        date_diff('day', per_item.last_purchased_on, cast($cutoff as date)) as days_since_user_item_purchase,
        -- the user's own cycle for the item: null until they bought it twice
        case
            when per_item.n_purchase_days > 1
                then date_diff('day', per_item.first_purchased_on, per_item.last_purchased_on)
                    / (per_item.n_purchase_days - 1.0)
        end as user_item_interval_days,
        per_item.n_purchase_days / user_days.n_purchase_days::double as user_item_basket_share,
        row_number() over (
            partition by per_item.user_id
            order by per_item.n_purchase_days desc, per_item.last_purchased_on desc, per_item.item_id
        ) as buy_again_rank
    from per_item
    inner join user_days using (user_id)
)

select * from final
