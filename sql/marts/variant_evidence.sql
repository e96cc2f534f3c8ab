-- Each variant's sends and conversions for $campaign_id in the $lookback_days before $cutoff (holdout
-- excluded): the evidence the bandit's Beta posteriors are updated with. Only send reports known before
-- the run's day ($cutoff_day) count, so rerunning a past night after late restatements gives its answer.
-- A send is reported once its attribution window has closed, so a recent send is not a false failure.
with sends as (
    select variant_id, user_id, sent_at, converted_at
    from staging.stg_campaign_exposures
    where campaign_id = $campaign_id
        and not is_holdout
        and sent_at < $cutoff
        and sent_at >= $cutoff - to_days(cast($lookback_days as integer))
        and known_on < $cutoff_day
    qualify row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1
),

final as (
    select
        variant_id,
        count(*) as sends,
        count(*) filter (where converted_at is not null and converted_at < $cutoff) as conversions
    from sends
    group by variant_id
    order by variant_id
)

select * from final
