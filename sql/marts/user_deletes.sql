-- Braze's delete feed: every id Braze holds a profile for (now, or before this night was first published)
-- that has no payload tonight: erased, no longer consenting to anything the payload needs, or no longer
-- reachable. Braze's delete sync takes an identifier and UPDATED_AT, and refuses a payload column.
with tonight as (
    select external_id
    from braze_ids
),

held as (
    select external_id
    from braze_held
    where now_md5 is not null or before_md5 is not null
),

gone as (
    select external_id
    from held
    anti join tonight using (external_id)
),

final as (
    select
        $run_date::date as run_date,
        external_id,
        $updated_at::timestamp as updated_at
    from gone
)

select * from final
