-- The logged sends of $campaign_id from $window_start to $cutoff (holdout included), one row per send in
-- its latest report known before the run's day ($cutoff_day), with what off-policy evaluation and the
-- contextual bandit need: the arm sent, its outcomes, the logging propensity when the exposure carries it,
-- the allocation's policy and share of the arm on the send's day (meta.allocation_decisions), and the
-- user's country and language (tasks/ope.py adds the RFM segment where marts.segments exists).
with sends as (
    select variant_id, user_id, sent_at, converted_at, revenue_cents, is_holdout, position, propensity
    from staging.stg_campaign_exposures
    where campaign_id = $campaign_id
        and sent_at >= $window_start
        and sent_at < $cutoff
        and known_on < $cutoff_day
    qualify row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1
),

decisions as (
    select run_date, variant_id, policy, share
    from meta.allocation_decisions
    where campaign_id = $campaign_id
),

profiles as (
    select user_id, country, language
    from staging.stg_users
    where is_latest
),

final as (
    select
        -- ids
        sends.variant_id,
        sends.user_id,
        -- timestamps
        sends.sent_at,
        -- flags
        sends.is_holdout,
        coalesce(sends.converted_at < $cutoff, false) as is_converted,
        -- numerics
        case when sends.converted_at < $cutoff then sends.revenue_cents else 0 end as revenue_cents,
        sends.position,
        sends.propensity as logged_propensity,
        decisions.share as decision_share,
        -- contexts
        decisions.policy as decision_policy,
        coalesce(profiles.country, 'unknown') as country,
        coalesce(profiles.language, 'unknown') as language
    from sends
    left join decisions
        on decisions.run_date = cast(sends.sent_at as date) and decisions.variant_id = sends.variant_id
    left join profiles using (user_id)
    order by sends.sent_at, sends.user_id
)

select * from final
