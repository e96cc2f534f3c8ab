-- Each in-scope user's probability of purchasing within the model's horizon, and its decile
-- (10 = most likely), for audience selection in BI and campaign tools.
with scored as (
    select user_id, conversion_probability
    from model.scored_users
),

final as (
    select
        -- keys
        $run_date as run_date,
        user_id,
        -- scores
        conversion_probability,
        ntile(10) over (order by conversion_probability, user_id) as propensity_decile,
        $horizon_days as horizon_days,
        $model_version as model_version,
        -- 'propensity' (the model), or 'baseline:recency' / 'baseline:frequency' when that beat it
        $served_by as served_by
    from scored
)

select * from final
