-- One row per user known before the cutoff. A later file may restate a user: the newest file wins.
with source as (
    select * from raw.users
    where coalesce(_file_date < $run_date, true)
),

ranked as (
    select
        *,
        row_number() over (
            partition by user_id order by _file_date desc nulls last, _source_file desc, created_at desc
        ) as restatement_rank
    from source
    where user_id is not null
),

final as (
    select
        -- ids
        user_id,
        -- timestamps
        created_at,
        -- attributes
        upper(trim(country)) as country,
        lower(trim(language)) as language,
        trim(age_band) as age_band,
        lower(trim(gender)) as gender
    from ranked
    where restatement_rank = 1
)

select * from final
