-- The units of campaign $campaign_id's experiment: each user's first send of the campaign from
-- $window_start to $cutoff, as reported before the run's day ($cutoff_day), with its arm, its outcomes,
-- the user's behaviour in the $covariate_days before that send (CUPED's covariates), the event-based
-- metrics of $event_metrics and the user's attributes as known before the send. One unit per user keeps
-- units independent whether a campaign system randomises each send or each user; later sends of the same
-- user are not counted. Outcomes the exposures report are final: a send is reported once its attribution
-- closed.
--
-- $event_metrics lists the event-based metrics as values, never as SQL: {metric, event_types, window_days,
-- aggregate ('any', 'count' or 'sum'), sum_of ('value' or 'quantity')}. Each unit gets, per metric, its
-- value over the window_days after the send (NULL while that window is still open at $cutoff) and over
-- the same length of time before the send (the metric's pre-period, CUPED's default covariate).
with sends as (
    select variant_id, user_id, sent_at, clicked_at, converted_at, revenue_cents
    from staging.stg_campaign_exposures
    where campaign_id = $campaign_id
        and sent_at >= $window_start
        and sent_at < $cutoff
        and known_on < $cutoff_day
    qualify row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1
),

first_sends as (
    select *
    from sends
    qualify row_number() over (partition by user_id order by sent_at, variant_id) = 1
),

behaviour_before as (
    select
        first_sends.user_id,
        count(*) as events_before,
        count(*) filter (where events.event_type = 'purchase') as purchases_before,
        coalesce(sum(events.value) filter (where events.event_type = 'purchase'), 0) as purchase_value_before,
        count(*) filter (where events.event_type = 'click') as clicks_before
    from first_sends
    inner join staging.stg_interactions as events
        on events.user_id = first_sends.user_id
        and events.occurred_at < first_sends.sent_at
        and events.occurred_at >= first_sends.sent_at - to_days(cast($covariate_days as integer))
    group by first_sends.user_id
),

definitions as (
    select unnest(
        cast($event_metrics as struct(
            metric varchar, event_types varchar[], window_days integer, aggregate varchar, sum_of varchar
        )[]),
        recursive := true
    )
),

metric_events as (
    -- each unit's events of each metric's types within its window either side of the send, with what the
    -- metric adds up for each (a purchase line without its quantity is one unit)
    select
        first_sends.user_id,
        definitions.metric,
        events.occurred_at >= first_sends.sent_at as is_after,
        case
            when definitions.aggregate = 'sum' and definitions.sum_of = 'quantity' then coalesce(events.quantity, 1)
            when definitions.aggregate = 'sum' then coalesce(events.value, 0)
            else 1
        end as amount
    from first_sends
    cross join definitions
    inner join staging.stg_interactions as events
        on events.user_id = first_sends.user_id
        and list_contains(definitions.event_types, events.event_type)
        and events.occurred_at >= first_sends.sent_at - to_days(definitions.window_days)
        and events.occurred_at < first_sends.sent_at + to_days(definitions.window_days)
        and events.occurred_at < $cutoff
),

metric_totals as (
    select
        user_id,
        metric,
        coalesce(sum(amount) filter (where is_after), 0) as total_after,
        coalesce(sum(amount) filter (where not is_after), 0) as total_before,
        count(*) filter (where is_after) as events_after,
        count(*) filter (where not is_after) as events_before
    from metric_events
    group by user_id, metric
),

metric_values as (
    select
        first_sends.user_id,
        list(
            struct_pack(
                metric := definitions.metric,
                value := case
                    when first_sends.sent_at + to_days(definitions.window_days) > $cutoff then null
                    when definitions.aggregate = 'any' then cast(coalesce(totals.events_after, 0) > 0 as double)
                    else cast(coalesce(totals.total_after, 0) as double)
                end,
                value_before := case
                    when definitions.aggregate = 'any' then cast(coalesce(totals.events_before, 0) > 0 as double)
                    else cast(coalesce(totals.total_before, 0) as double)
                end
            )
            order by definitions.metric
        ) as event_metrics
    from first_sends
    cross join definitions
    left join metric_totals as totals
        on totals.user_id = first_sends.user_id
        and totals.metric = definitions.metric
    group by first_sends.user_id
),

attributes_at_send as (
    -- the newest version of the user known before the send's day: an attribute restated later may already
    -- reflect the send's effect (a past-year spend that includes this campaign's purchases)
    select first_sends.user_id, users
    from first_sends
    inner join staging.stg_users as users
        on users.user_id = first_sends.user_id
        and users.known_on < cast(first_sends.sent_at as date)
    qualify row_number() over (partition by first_sends.user_id order by users.known_on desc) = 1
),

final as (
    select
        first_sends.variant_id,
        first_sends.user_id,
        first_sends.sent_at,
        -- outcomes of the send
        cast(first_sends.converted_at is not null and first_sends.converted_at < $cutoff as integer) as is_converted,
        cast(first_sends.clicked_at is not null and first_sends.clicked_at < $cutoff as integer) as is_clicked,
        case when first_sends.converted_at < $cutoff then first_sends.revenue_cents else 0 end as revenue_cents,
        -- the same behaviours before the send
        cast(coalesce(before.events_before, 0) as double) as events_before,
        cast(coalesce(before.purchases_before, 0) as double) as purchases_before,
        cast(coalesce(before.purchase_value_before, 0) as double) as purchase_value_before,
        cast(coalesce(before.clicks_before, 0) as double) as clicks_before,
        -- event-based metrics (metric, value, value_before) and the user's attributes (a struct of
        -- staging.stg_users' columns) before the send
        coalesce(metric_values.event_metrics, []) as event_metrics,
        attributes_at_send.users as user_attributes
    from first_sends
    left join behaviour_before as before using (user_id)
    left join metric_values using (user_id)
    left join attributes_at_send using (user_id)
)

select * from final
order by variant_id, user_id
