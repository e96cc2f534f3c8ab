-- features.user_features at the run's cutoff, as the feature gate checks it: chunk $chunk of $chunks by
-- user.
with final as (
    select * from features.user_features
    where cutoff = $cutoff and md5_number(user_id) % cast($chunks as ubigint) = $chunk
)

select * from final
