-- The consent changes this run loaded, with whether their user is known.
with this_run as (
    select *
    from raw.consents
    where _loaded_run_date = $run_date and list_contains($files, _source_file)
),

known_users as (
    select distinct user_id from raw.users where coalesce(_file_date < $run_date, true) and user_id is not null
),

final as (
    select
        _row_key,
        _source_file,
        user_id,
        lower(trim(purpose)) as purpose,
        is_granted,
        updated_at,
        len(_invalid_columns) as _n_invalid_values,
        user_id in (select user_id from known_users) as _user_is_known
    from this_run
)

select * from final
