-- What Braze holds for every id ever published to it, from meta.braze_user_state (each id's newest published
-- row and its newest from another night; a delete is a row without a payload hash): the payload hash it holds
-- now, and the one it held before this run date was first published. A night's feed is compared with both:
-- against "before", a rerun of the night resends the same users (the files differ only in UPDATED_AT);
-- against "now", it also corrects what an earlier run of the night sent if the payload has changed since.
-- The payload text comes from the update log, which an erasure empties of the user's rows: the state keeps
-- only hashes, so an erased user's payload is kept nowhere (their hash still lets the delete reach Braze).
with state as (
    select external_id, run_date, updated_at, payload_md5
    from meta.braze_user_state
),

held_now as (
    select external_id, payload_md5, updated_at
    from state
    qualify row_number() over (partition by external_id order by updated_at desc) = 1
),

held_before as (
    select external_id, payload_md5, updated_at
    from state
    where run_date <> $run_date
    qualify row_number() over (partition by external_id order by updated_at desc) = 1
),

logged as (
    select external_id, updated_at, any_value(payload) as payload
    from meta.braze_user_update_log
    group by external_id, updated_at
),

final as (
    select
        held_now.external_id,
        held_now.payload_md5 as now_md5,  -- null: Braze deleted the user
        held_before.payload_md5 as before_md5,  -- null: deleted, or unknown before this night
        before_log.payload as before_payload  -- null: no payload held before this night
    from held_now
    left join held_before using (external_id)
    left join logged as before_log
        on before_log.external_id = held_before.external_id
        and before_log.updated_at = held_before.updated_at
        and held_before.payload_md5 is not null
)

select * from final
