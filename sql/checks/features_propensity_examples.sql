-- features.propensity_examples at the run's cutoff, as the feature gate checks it.
with final as (
    select * from features.propensity_examples where cutoff = $cutoff
)

select * from final
