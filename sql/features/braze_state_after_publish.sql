-- meta.braze_user_state once this night's feed is published: the rows just published (a delete has no
-- payload hash) replace the ids' rows for this run date; each id keeps its newest row and its newest from
-- another night (all features/braze_held_payloads needs); an id whose newest row is a delete from another
-- night is forgotten, as Braze has already deleted it.
with published as (
    select external_id, run_date, updated_at, payload_md5
    from marts.user_updates
    union all
    select external_id, run_date, updated_at, null::varchar as payload_md5
    from marts.user_deletes
),

kept as (
    select state.external_id, state.run_date, state.updated_at, state.payload_md5
    from meta.braze_user_state as state
    anti join published using (external_id, run_date)
),

combined as (
    select * from kept
    union all
    select * from published
),

newest as (
    select external_id, run_date, payload_md5 is null as is_delete
    from combined
    qualify row_number() over (partition by external_id order by updated_at desc) = 1
),

final as (
    select combined.external_id, combined.run_date, combined.updated_at, combined.payload_md5
    from combined
    inner join newest using (external_id)
    where not (newest.is_delete and newest.run_date <> $run_date)
    qualify row_number() over (partition by combined.external_id order by combined.updated_at desc) <= 2
)

select * from final
