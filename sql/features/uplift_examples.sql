-- The uplift models' units, from staging tables alone (no nightly feature table: the experiments run without
-- the features stage). One file serves both uses, chosen by $mode:
--   'experiment'  campaign $campaign_id's sends from $window_start to $cutoff, each anchored at its sent_at,
--                 with its arm and outcomes: every send, not only a user's first (experiment_units counts one
--                 per user for the A/B tests), as a user's later sends are randomised too and the models need
--                 them; the split keeps a user's sends in one part and the bootstrap resamples users;
--   'score'       every user known at $cutoff, anchored at $cutoff, no arm and no outcome: the audience the
--                 allocation scores with the same features.
-- Only users whose latest consent grants profiling enter. Features are known before the anchor: behaviour
-- before it over 7, 30, 90 and 365 days, recency, tenure, earlier campaign sends, and every attribute column
-- of staging.stg_users (whatever the company declares) as known before the anchor's day.
with profiled as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

sends as (
    select variant_id, user_id, sent_at, clicked_at, converted_at, revenue_cents
    from staging.stg_campaign_exposures
    where $mode = 'experiment'
        and campaign_id = $campaign_id
        and sent_at >= $window_start
        and sent_at < $cutoff
        and known_on < $cutoff_day
    qualify row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1
),

audience as (
    select distinct user_id
    from staging.stg_users
    where $mode = 'score' and created_at < $cutoff and known_on < $cutoff_day
),

anchors as (
    select
        user_id,
        variant_id,
        sent_at as anchor_at,
        cast(converted_at is not null and converted_at < $cutoff as integer) as is_converted,
        cast(clicked_at is not null and clicked_at < $cutoff as integer) as is_clicked,
        case when converted_at < $cutoff then revenue_cents else 0 end as revenue_cents
    from sends
    semi join profiled using (user_id)
    union all
    select
        user_id,
        null::varchar as variant_id,
        cast($cutoff as timestamp) as anchor_at,
        null::integer as is_converted,
        null::integer as is_clicked,
        null::bigint as revenue_cents
    from audience
    semi join profiled using (user_id)
),

events as (
    select
        anchors.user_id,
        anchors.anchor_at,
        events.event_type,
        events.value,
        events.occurred_at,
        -- a purchase is an order, as in user_features: a line without an order_id is an order of its own;
        -- every other event belongs to no order
        case when events.event_type = 'purchase' then
            coalesce(events.order_id, 'line:' || hash(events.item_id, events.occurred_at, events.value))
        end as order_key
    from anchors
    inner join staging.stg_interactions as events
        on events.user_id = anchors.user_id
        and events.occurred_at < anchors.anchor_at
),

orders as (
    -- per unit, each order once (and the unit's other events together, order_key null): an order counts
    -- in a window when its latest purchase line before the anchor falls in it, so the purchase counts
    -- below are plain counts, not distinct counts over every event (which cost most of this model's time)
    select
        user_id,
        anchor_at,
        order_key,
        count(*) filter (where occurred_at >= anchor_at - interval 7 day) as n_events_7d,
        count(*) filter (where occurred_at >= anchor_at - interval 30 day) as n_events_30d,
        count(*) filter (where occurred_at >= anchor_at - interval 90 day) as n_events_90d,
        count(*) filter (where occurred_at >= anchor_at - interval 365 day) as n_events_365d,
        -- net of returns, as staging signs them
        sum(value) filter (
            where event_type in ('purchase', 'return') and occurred_at >= anchor_at - interval 7 day
        ) as spend_cents_7d,
        sum(value) filter (
            where event_type in ('purchase', 'return') and occurred_at >= anchor_at - interval 30 day
        ) as spend_cents_30d,
        sum(value) filter (
            where event_type in ('purchase', 'return') and occurred_at >= anchor_at - interval 90 day
        ) as spend_cents_90d,
        sum(value) filter (
            where event_type in ('purchase', 'return') and occurred_at >= anchor_at - interval 365 day
        ) as spend_cents_365d,
        max(occurred_at) as last_event_at,
        max(occurred_at) filter (where event_type = 'purchase') as last_purchase_at
    from events
    group by user_id, anchor_at, order_key
),

behaviour as (
    select
        user_id,
        anchor_at,
        cast(sum(n_events_7d) as bigint) as n_events_7d,
        cast(sum(n_events_30d) as bigint) as n_events_30d,
        cast(sum(n_events_90d) as bigint) as n_events_90d,
        cast(sum(n_events_365d) as bigint) as n_events_365d,
        count(*) filter (where last_purchase_at >= anchor_at - interval 7 day) as n_purchases_7d,
        count(*) filter (where last_purchase_at >= anchor_at - interval 30 day) as n_purchases_30d,
        count(*) filter (where last_purchase_at >= anchor_at - interval 90 day) as n_purchases_90d,
        count(*) filter (where last_purchase_at >= anchor_at - interval 365 day) as n_purchases_365d,
        coalesce(sum(spend_cents_7d), 0) as spend_cents_7d,
        coalesce(sum(spend_cents_30d), 0) as spend_cents_30d,
        coalesce(sum(spend_cents_90d), 0) as spend_cents_90d,
        coalesce(sum(spend_cents_365d), 0) as spend_cents_365d,
        date_diff('second', max(last_event_at), anchor_at) / 86400.0 as days_since_last_event,
        date_diff('second', max(last_purchase_at), anchor_at) / 86400.0 as days_since_last_purchase
    from orders
    group by user_id, anchor_at
),

campaign_history as (
    -- sends of any campaign before the anchor, as reported before its day
    select
        anchors.user_id,
        anchors.anchor_at,
        count(distinct (exposures.campaign_id, exposures.sent_at)) as n_campaign_sends_before
    from anchors
    inner join staging.stg_campaign_exposures as exposures
        on exposures.user_id = anchors.user_id
        and exposures.sent_at < anchors.anchor_at
        and exposures.known_on < cast(anchors.anchor_at as date)
        and not exposures.is_holdout
    group by anchors.user_id, anchors.anchor_at
),

users as (
    -- each unit's user as known before the anchor's day: the newest such version
    select anchors.anchor_at, profile.*
    from anchors
    inner join staging.stg_users as profile
        on profile.user_id = anchors.user_id
        and profile.known_on < cast(anchors.anchor_at as date)
    qualify row_number() over (partition by anchors.user_id, anchors.anchor_at order by profile.known_on desc) = 1
),

final as (
    select
        -- ids
        $campaign_id as campaign_id,
        anchors.variant_id,
        anchors.user_id,
        -- timestamps
        anchors.anchor_at as sent_at,
        -- outcomes
        anchors.is_converted,
        anchors.is_clicked,
        anchors.revenue_cents,
        -- behaviour before the anchor
        date_diff('day', users.created_at, anchors.anchor_at) as days_since_signup,
        coalesce(behaviour.n_events_7d, 0) as n_events_7d,
        coalesce(behaviour.n_events_30d, 0) as n_events_30d,
        coalesce(behaviour.n_events_90d, 0) as n_events_90d,
        coalesce(behaviour.n_events_365d, 0) as n_events_365d,
        coalesce(behaviour.n_purchases_7d, 0) as n_purchases_7d,
        coalesce(behaviour.n_purchases_30d, 0) as n_purchases_30d,
        coalesce(behaviour.n_purchases_90d, 0) as n_purchases_90d,
        coalesce(behaviour.n_purchases_365d, 0) as n_purchases_365d,
        coalesce(behaviour.spend_cents_7d, 0) as spend_cents_7d,
        coalesce(behaviour.spend_cents_30d, 0) as spend_cents_30d,
        coalesce(behaviour.spend_cents_90d, 0) as spend_cents_90d,
        coalesce(behaviour.spend_cents_365d, 0) as spend_cents_365d,
        behaviour.days_since_last_event,
        behaviour.days_since_last_purchase,
        coalesce(campaign_history.n_campaign_sends_before, 0) as n_campaign_sends_before,
        -- the user's attributes: every column staging.stg_users carries (a company's declared ones too)
        users.* exclude (user_id, anchor_at, created_at, known_on, is_latest)
    from anchors
    left join behaviour using (user_id, anchor_at)
    left join campaign_history using (user_id, anchor_at)
    left join users using (user_id, anchor_at)
)

select * from final
order by variant_id, user_id, sent_at
