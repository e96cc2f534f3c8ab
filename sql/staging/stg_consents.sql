-- The full consent history before the cutoff, one row per change; `is_latest` marks the row that wins.
with source as (
    select * from raw.consents
    where coalesce(_file_date < $run_date, true)
        and user_id is not null
        and updated_at < $cutoff
),

deduplicated as (
    select distinct
        user_id,
        lower(trim(purpose)) as purpose,
        is_granted,
        updated_at
    from source
),

final as (
    select
        -- ids
        user_id,
        purpose,
        -- flags
        is_granted,
        row_number() over (
            partition by user_id, purpose order by updated_at desc, is_granted asc
        ) = 1 as is_latest,
        -- timestamps
        updated_at
    from deduplicated
)

select * from final
