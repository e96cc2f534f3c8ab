-- One row per item; the newest restatement wins. Availability is as of the newest file.
with source as (
    select * from raw.items
    where coalesce(_file_date < $run_date, true)
),

ranked as (
    select
        *,
        row_number() over (
            partition by item_id order by _file_date desc nulls last, _source_file desc
        ) as restatement_rank
    from source
    where item_id is not null
),

final as (
    select
        -- ids
        item_id,
        -- descriptive
        title,
        lower(trim(category)) as category,
        tags,
        -- numerics
        price_cents,
        -- timestamps
        published_at,
        expires_at,
        -- flags
        coalesce(is_available, true) as is_available
    from ranked
    where restatement_rank = 1
)

select * from final
