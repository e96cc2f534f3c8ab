-- The units of campaign $campaign_id's experiment: each user's first send of the campaign from
-- $window_start to $cutoff, as reported before the run's day ($cutoff_day), with its arm, its outcomes
-- and the user's behaviour in the $covariate_days before that send (CUPED's covariates). One unit per
-- user keeps units independent whether a campaign system randomises each send or each user; later sends
-- of the same user are not counted. Outcomes are final: a send is reported once its attribution closed.
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
        cast(coalesce(before.clicks_before, 0) as double) as clicks_before
    from first_sends
    left join behaviour_before as before using (user_id)
)

select * from final
order by variant_id, user_id
