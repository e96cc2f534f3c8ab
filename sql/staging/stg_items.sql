-- Every version of every item known before the run (a later file may restate price, availability or
-- expiry). `known_on` is the day a version became known; `is_latest` marks the current one.
with source as (
    select *
    from raw.items
    where coalesce(_file_date < $run_date, true)
        and item_id is not null
),

versions as (
    select
        *,
        coalesce(_file_date, _loaded_run_date - 1) as known_on,
        row_number() over (
            partition by item_id, coalesce(_file_date, _loaded_run_date - 1) order by _source_file desc
        ) as rank_within_day
    from source
),

first_known as (
    -- the first version of a item counts as known from its own timestamp when that is earlier than
    -- its file: a full history delivered in one (undated or recent) snapshot still gives the past cutoffs
    -- their items
    select
        * exclude (known_on),
        case
            when row_number() over (partition by item_id order by known_on) = 1
                then least(known_on, coalesce(cast(published_at as date), known_on))
            else known_on
        end as known_on
    from versions
    where rank_within_day = 1
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
        known_on,
        -- flags
        coalesce(is_available, true) as is_available,
        row_number() over (partition by item_id order by known_on desc) = 1 as is_latest
    from first_known
)

select * from final
