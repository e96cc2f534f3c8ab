-- The users whose candidates are built as of $cutoff: those with features whose latest consent allows
-- profiling. For a training cutoff, a seeded sample: users are kept at the rate that keeps about $max_users
-- of those who engaged in the label window, and the users who did not engage at the same rate, so the
-- sample is representative (the ranker learns from the engaged; the engagement model from all). Every
-- later candidate model (similarity, candidates, examples) works on these users only, a bucket of them
-- at a time.
with consented as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

engaged as (
    select distinct user_id
    from staging.stg_interactions
    semi join consented using (user_id)
    where occurred_at >= $cutoff
        and occurred_at < $cutoff + to_days(cast($label_days as integer))
),

sampling as (
    select least(1.0, $max_users / greatest(count(*), 1)) as rate
    from engaged
),

final as (
    select
        $cutoff as cutoff,
        user_features.user_id,
        -- the user's bucket is user_hash % buckets: an integer, computed once per cutoff
        cast(md5_number(user_features.user_id) % 1048576 as integer) as user_hash
    from features.user_features
    semi join consented using (user_id)
    where user_features.cutoff = $cutoff
        and (
            not $is_training
            or (md5_number(concat(cast($seed as varchar), '|', user_features.user_id)) % 1000000) / 1000000.0
                < (select rate from sampling)
        )
)

select * from final
