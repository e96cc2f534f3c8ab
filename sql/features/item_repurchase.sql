-- Per item bought in the $repeat_history_days before $cutoff: its typical repurchase cycle across users
-- (the median days between one user's consecutive purchase days of it) and the share of its buyers who
-- bought it again. A user who bought an item once is "due" when the item's cycle has passed.
with purchases as (
    select user_id, item_id, purchased_on
    from staging.stg_purchase_days
    where first_purchased_at < $cutoff
        and last_purchased_at >= $cutoff - to_days(cast($repeat_history_days as integer))
),

gaps as (
    select
        item_id,
        user_id,
        date_diff(
            'day', lag(purchased_on) over (partition by user_id, item_id order by purchased_on), purchased_on
        ) as gap_days
    from purchases
),

buyers as (
    select item_id, user_id, count(gap_days) as n_repeats
    from gaps
    group by item_id, user_id
),

intervals as (
    select item_id, median(gap_days) as item_repurchase_interval_days
    from gaps
    where gap_days is not null
    group by item_id
),

item_buyers as (
    select
        item_id,
        count(*) as n_buyers,
        count(*) filter (where n_repeats > 0) / count(*)::double as item_repeat_share
    from buyers
    group by item_id
),

final as (
    select
        $cutoff as cutoff,
        item_buyers.item_id,
        item_buyers.n_buyers,
        item_buyers.item_repeat_share,
        intervals.item_repurchase_interval_days
    from item_buyers
    left join intervals using (item_id)
)

select * from final
