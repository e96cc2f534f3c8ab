-- Per user, as of $cutoff: recency, frequency and monetary value of behaviour, and campaign history.
-- Only events strictly before the cutoff, and rows known before its day ($cutoff_day), are read:
-- a feature never sees its own future.
-- Purchases are orders, not lines: n_purchases_* (and purchases_per_day_90d) count distinct orders, so a
-- basket of 30 lines is one purchase; a line without an order_id is an order of its own, so data without
-- orders still counts lines. revenue_cents_90d is net of returns (staging makes their value negative), so it
-- can be below zero when a return's purchase lies before the window. Event counts (n_events_*) stay lines.
with users_known as (
    -- each user as known at the cutoff
    select
        columns(lambda c: list_contains(['user_id', 'created_at', 'country', 'age_band', 'gender'], c)
            or list_contains(cast($attribute_names as varchar[]), c))
    from staging.stg_users
    where created_at < $cutoff and known_on < $cutoff_day
    qualify row_number() over (partition by user_id order by known_on desc) = 1
),

users as (
    -- with the company's own features as of the cutoff (config user_features.sql; the temp table holds
    -- user_id alone when there are none)
    select *
    from users_known
    left join user_sql_features using (user_id)
),

events as (
    select
        *,
        -- the order a purchase line belongs to (hash: a key for a line without one, per user and line)
        coalesce(order_id, 'line:' || hash(item_id, occurred_at, value, quantity, unit_price_cents, channel))
            as order_key
    from (
        -- by name, so a reduced copy of the staging table (tailor/evaluate.py stages ratings alone)
        -- reads NULL for the order columns it lacks
        select * from staging.stg_interactions
        union all by name
        select
            null::varchar as order_id,
            null::double as quantity,
            null::bigint as unit_price_cents,
            null::varchar as channel
        where false
    )
    where occurred_at < $cutoff
        and occurred_at >= $cutoff - interval 90 day
),

behaviour_events as (
    select
        user_id,
        count(*) filter (where occurred_at >= $cutoff - interval 7 day) as n_events_7d,
        count(*) filter (where occurred_at >= $cutoff - interval 30 day) as n_events_30d,
        count(*) as n_events_90d,
        count(*) filter (
            where event_type = 'click' and occurred_at >= $cutoff - interval 30 day
        ) as n_clicks_30d,
        count(*) filter (
            where event_type = 'add_to_cart' and occurred_at >= $cutoff - interval 30 day
        ) as n_carts_30d,
        coalesce(sum(value) filter (where event_type in ('purchase', 'return')), 0) as revenue_cents_90d,
        date_diff('second', max(occurred_at), $cutoff) / 86400.0 as days_since_last_event,
        date_diff('second', max(occurred_at) filter (where event_type = 'purchase'), $cutoff) / 86400.0
            as days_since_last_purchase
    from events
    group by user_id
),

-- The distinct counts, each from the distinct pairs it counts: plain group-bys that stream and spill, where
-- count(distinct ...) per user held every user's sets at once (most of this model's time at 1M users)
orders as (
    -- an order counts in the last 30 days when its latest purchase line falls in them
    select user_id, order_key, max(occurred_at) as last_line_at
    from events
    where event_type = 'purchase'
    group by user_id, order_key
),

order_counts as (
    select
        user_id,
        count(*) filter (where last_line_at >= $cutoff - interval 30 day) as n_purchases_30d,
        count(*) as n_purchases_90d
    from orders
    group by user_id
),

recent_items as (
    select user_id, count(*) as n_distinct_items_30d
    from (
        select distinct user_id, item_id from events where occurred_at >= $cutoff - interval 30 day
    )
    group by user_id
),

recent_days as (
    select user_id, count(*) as n_active_days_30d
    from (
        select distinct user_id, cast(occurred_at as date) as active_day
        from events
        where occurred_at >= $cutoff - interval 30 day
    )
    group by user_id
),

behaviour as (
    select
        behaviour_events.*,
        coalesce(order_counts.n_purchases_30d, 0) as n_purchases_30d,
        coalesce(order_counts.n_purchases_90d, 0) as n_purchases_90d,
        coalesce(recent_items.n_distinct_items_30d, 0) as n_distinct_items_30d,
        coalesce(recent_days.n_active_days_30d, 0) as n_active_days_30d
    from behaviour_events
    left join order_counts using (user_id)
    left join recent_items using (user_id)
    left join recent_days using (user_id)
),

category_counts as (
    select events.user_id, items.category, count(*) as n_events
    from events
    inner join staging.stg_items as items on items.item_id = events.item_id and items.is_latest
    group by all
),

concentration as (
    -- how focused a user's taste is: the share of their events in their top category, and the
    -- Herfindahl index of their category shares (1 = a single category)
    select
        user_id,
        max(n_events) / sum(n_events) as top_category_share_90d,
        sum(n_events * n_events) / (sum(n_events) * sum(n_events)) as category_concentration_90d
    from category_counts
    group by user_id
),

sends_known as (
    -- each send as reported before the cutoff; outcomes count only if they happened before it
    select *
    from staging.stg_campaign_exposures
    where sent_at < $cutoff
        and sent_at >= $cutoff - interval 90 day
        and known_on < $cutoff_day
    qualify row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1
),

campaigns as (
    select
        user_id,
        count(*) filter (where not is_holdout) as n_campaign_sends_90d,
        count(*) filter (where opened_at < $cutoff) as n_campaign_opens_90d,
        count(*) filter (where clicked_at < $cutoff) as n_campaign_clicks_90d
    from sends_known
    group by user_id
),

final as (
    select
        -- keys
        $cutoff as cutoff,
        -- user_id, then attributes: country, age_band and gender (sensitive: a model uses them only when
        -- config names them) and the company's declared ones
        users.* exclude (created_at),
        date_diff('day', users.created_at, $cutoff) as days_since_signup,
        -- behaviour
        coalesce(behaviour.n_events_7d, 0) as n_events_7d,
        coalesce(behaviour.n_events_30d, 0) as n_events_30d,
        coalesce(behaviour.n_events_90d, 0) as n_events_90d,
        coalesce(behaviour.n_clicks_30d, 0) as n_clicks_30d,
        coalesce(behaviour.n_carts_30d, 0) as n_carts_30d,
        coalesce(behaviour.n_purchases_30d, 0) as n_purchases_30d,
        coalesce(behaviour.n_purchases_90d, 0) as n_purchases_90d,
        coalesce(behaviour.revenue_cents_90d, 0) as revenue_cents_90d,
        coalesce(behaviour.n_distinct_items_30d, 0) as n_distinct_items_30d,
        coalesce(behaviour.n_active_days_30d, 0) as n_active_days_30d,
        behaviour.days_since_last_event,
        behaviour.days_since_last_purchase,
        -- rates over the part of the window the user existed in: a new user's counts are short, not low
        coalesce(behaviour.n_events_90d, 0) / least(90, greatest(date_diff('day', users.created_at, $cutoff), 1))
            as events_per_day_90d,
        coalesce(behaviour.n_purchases_90d, 0) / least(90, greatest(date_diff('day', users.created_at, $cutoff), 1))
            as purchases_per_day_90d,
        -- campaigns
        coalesce(campaigns.n_campaign_sends_90d, 0) as n_campaign_sends_90d,
        coalesce(campaigns.n_campaign_opens_90d, 0) as n_campaign_opens_90d,
        coalesce(campaigns.n_campaign_clicks_90d, 0) as n_campaign_clicks_90d,
        -- taste
        concentration.top_category_share_90d,
        concentration.category_concentration_90d
    from users
    left join behaviour using (user_id)
    left join campaigns using (user_id)
    left join concentration using (user_id)
)

select * from final
