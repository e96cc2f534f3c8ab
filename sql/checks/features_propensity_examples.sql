-- features.propensity_examples at the run's cutoff, as the feature gate checks it: chunk $chunk of $chunks
-- by user.
with final as (
    select * from features.propensity_examples
    where cutoff = $cutoff and md5_number(user_id) % cast($chunks as ubigint) = $chunk
)

select * from final
