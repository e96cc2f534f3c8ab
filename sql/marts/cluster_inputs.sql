-- The features behavioural clusters are learned from: every user who allows profiling, as of $cutoff.
with profiled as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

final as (
    select features.*
    from features.user_features as features
    semi join profiled using (user_id)
    where features.cutoff = $cutoff
    order by features.user_id
)

select * from final
