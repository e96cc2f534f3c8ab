-- Per item published before $cutoff, as its catalogue row was known then: recent popularity, its
-- trend, age, price and whether it could be offered.
with items as (
    select *
    from staging.stg_items
    where published_at < $cutoff and known_on < $cutoff_day
    qualify row_number() over (partition by item_id order by known_on desc) = 1
),

recent as (
    select item_id, user_id, event_type, occurred_at
    from staging.stg_interactions
    where occurred_at < $cutoff
        and occurred_at >= $cutoff - to_days(cast($popularity_days as integer))
),

activity as (
    select
        item_id,
        count(*) as n_events_recent,
        count(distinct user_id) as n_users_recent,
        count(*) filter (where event_type = 'purchase') as n_purchases_recent,
        count(*) filter (where occurred_at >= $cutoff - interval 3 day) as n_events_3d
    from recent
    group by item_id
),

final as (
    select
        -- keys
        $cutoff as cutoff,
        items.item_id,
        -- attributes
        items.category,
        items.price_cents,
        date_diff('day', items.published_at, $cutoff) as days_since_published,
        not items.is_excluded and coalesce(items.expires_at > $cutoff, true) as is_live,  -- is_excluded: recommendations.exclude, availability included
        -- popularity
        coalesce(activity.n_events_recent, 0) as n_events_recent,
        coalesce(activity.n_users_recent, 0) as n_users_recent,
        coalesce(activity.n_purchases_recent, 0) as n_purchases_recent,
        -- events per day in the last 3 days over events per day in the whole window
        (coalesce(activity.n_events_3d, 0) / 3.0)
            / greatest(coalesce(activity.n_events_recent, 0) / $popularity_days, 1.0 / $popularity_days)
            as trend_ratio,
        row_number() over (
            order by coalesce(activity.n_users_recent, 0) desc, items.item_id
        ) as popularity_rank
    from items
    left join activity using (item_id)
)

select * from final
