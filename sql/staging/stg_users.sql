-- Every version of every user known before the run: a later file may restate a user. `known_on` is the
-- day the version became known (its file's date, or the day before the run that loaded an undated
-- snapshot); features pick the newest version known at their cutoff, outputs the latest (`is_latest`).
with source as (
    select *
    from raw.users
    where coalesce(_file_date < $run_date, true)
        and user_id is not null
),

versions as (
    select
        *,
        coalesce(_file_date, _loaded_run_date - 1) as known_on,
        row_number() over (
            partition by user_id, coalesce(_file_date, _loaded_run_date - 1)
            order by _source_file desc, created_at desc
        ) as rank_within_day
    from source
),

final as (
    select
        -- ids
        user_id,
        -- timestamps
        created_at,
        known_on,
        -- attributes
        upper(trim(country)) as country,
        lower(trim(language)) as language,
        trim(age_band) as age_band,
        lower(trim(gender)) as gender,
        -- flags
        row_number() over (partition by user_id order by known_on desc) = 1 as is_latest
    from versions
    where rank_within_day = 1
)

select * from final
