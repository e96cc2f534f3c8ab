-- Every version of every item known before the run (a later file may restate price, availability or
-- expiry). `known_on` is the day a version became known; `is_latest` marks the current one.
-- `is_excluded` marks an item that may never be recommended under recommendations.exclude (fuel, gift
-- cards, a price range...), and `excluded_by` names the first rule it meets, in the order: categories,
-- departments, item_id_patterns (case-insensitive SQL LIKE, backslash escapes % and _), min_price_cents,
-- max_price_cents, exclude_unavailable. An unknown price meets no price rule.
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

exclusions as (
    select
        *,
        case
            when list_contains(cast($exclude_categories as varchar[]), lower(trim(category)))
                then 'categories'
            when list_contains(cast($exclude_departments as varchar[]), lower(trim(department)))
                then 'departments'
            when len(list_filter(
                cast($exclude_item_id_patterns as varchar[]), lambda pattern: item_id ilike pattern escape '\'
            )) > 0
                then 'item_id_patterns'
            when price_cents < cast($exclude_min_price_cents as bigint) then 'min_price_cents'
            when price_cents > cast($exclude_max_price_cents as bigint) then 'max_price_cents'
            when $exclude_unavailable and not coalesce(is_available, true) then 'exclude_unavailable'
        end as excluded_by
    from first_known
),

final as (
    select
        -- ids
        item_id,
        -- descriptive
        title,
        lower(trim(category)) as category,
        lower(trim(department)) as department,
        brand,
        tags,
        -- numerics
        price_cents,
        -- timestamps
        published_at,
        expires_at,
        known_on,
        -- flags
        coalesce(is_available, true) as is_available,
        excluded_by is not null as is_excluded,
        excluded_by,
        row_number() over (partition by item_id order by known_on desc) = 1 as is_latest
    from exclusions
)

select * from final
