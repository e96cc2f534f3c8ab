-- Every version of every user known before the run: a later file may restate a user. `known_on` is the
-- day the version became known (its file's date, or the day before the run that loaded an undated
-- snapshot; the first version from its own sign-up day when earlier); features pick the newest version
-- known at their cutoff, outputs the latest (`is_latest`).
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

first_known as (
    -- the first version of a user counts as known from its own timestamp when that is earlier than
    -- its file: a full history delivered in one (undated or recent) snapshot still gives the past cutoffs
    -- their users
    select
        * exclude (known_on),
        case
            when row_number() over (partition by user_id order by known_on) = 1
                then least(known_on, coalesce(cast(created_at as date), known_on))
            else known_on
        end as known_on
    from versions
    where rank_within_day = 1
),

final as (
    select
        -- ids, and the company's own attributes its config declares ($attribute_names: user_features.attributes)
        columns(lambda c: c = 'user_id' or list_contains(cast($attribute_names as varchar[]), c)),
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
    from first_known
)

select * from final
