-- The items each in-scope user interacted with in the $label_days after $cutoff, except items bought
-- before the cutoff (never recommended): the relevant set that offline ranking metrics count against.
with users as (
    select distinct user_id
    from features.candidates
    where cutoff = $cutoff
),

bought as (
    select distinct user_id, item_id
    from staging.stg_interactions
    where list_contains($excluded_event_types, event_type) and occurred_at < $cutoff
),

final as (
    select distinct interactions.user_id, interactions.item_id
    from staging.stg_interactions as interactions
    semi join users using (user_id)
    anti join bought using (user_id, item_id)
    where interactions.occurred_at >= $cutoff
        and interactions.occurred_at < $cutoff + to_days(cast($label_days as integer))
)

select * from final
