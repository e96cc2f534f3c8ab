-- One row per user in scope as of $cutoff, with the target: did the user purchase anything in the
-- $horizon_days after the cutoff (always false for a scoring cutoff, whose future is unknown).
-- Scoring a user's propensity is profiling: only users whose latest consent allows it are in scope.
with consented as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

purchasers as (
    select distinct user_id
    from staging.stg_interactions
    where event_type = 'purchase'
        and occurred_at >= $cutoff
        and occurred_at < $cutoff + to_days(cast($horizon_days as integer))
),

final as (
    select
        users.*,
        purchasers.user_id is not null as is_converted
    from features.user_features as users
    semi join consented using (user_id)
    left join purchasers using (user_id)
    where users.cutoff = $cutoff
)

select * from final
