-- features.user_features at the run's cutoff, as the feature gate checks it.
with final as (
    select * from features.user_features where cutoff = $cutoff
)

select * from final
