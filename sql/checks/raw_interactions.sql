-- The interactions this run loaded, with what the gate checks beyond the values themselves: whether
-- user and item are known, whether the event was delivered before (by row key: the first copy stays).
with this_run as (
    select *
    from raw.interactions
    where _loaded_run_date = $run_date and list_contains($files, _source_file)
),

known_users as (
    select distinct user_id from raw.users where coalesce(_file_date < $run_date, true) and user_id is not null
),

known_items as (
    select distinct item_id from raw.items where coalesce(_file_date < $run_date, true) and item_id is not null
),

same_keys as (
    select interactions._row_key, interactions.user_id, interactions.item_id, interactions.event_type,
        interactions.occurred_at
    from raw.interactions
    semi join this_run using (user_id, item_id, event_type, occurred_at)
    where coalesce(interactions._file_date < $run_date, true)
),

copies as (
    select
        _row_key,
        row_number() over (partition by user_id, item_id, event_type, occurred_at order by _row_key) > 1
            as is_duplicate
    from same_keys
),

final as (
    select
        this_run._row_key,
        this_run._source_file,
        this_run.user_id,
        this_run.item_id,
        lower(trim(this_run.event_type)) as event_type,
        this_run.occurred_at,
        len(this_run._invalid_columns) as _n_invalid_values,
        case when lower(trim(this_run.event_type)) = 'rating' then this_run.value end as _rating,
        case when lower(trim(this_run.event_type)) = 'purchase' then this_run.value end as _purchase_value,
        this_run.user_id in (select user_id from known_users) as _user_is_known,
        this_run.item_id in (select item_id from known_items) as _item_is_known,
        coalesce(copies.is_duplicate, false) as _is_duplicate
    from this_run
    left join copies using (_row_key)
)

select * from final
