-- The campaign sends this run loaded; `_latest_event_at` is the last of send and outcomes, none of
-- which may lie after the cutoff.
with this_run as (
    select *
    from raw.campaign_exposures
    where _loaded_run_date = $run_date and list_contains($files, _source_file)
),

known_users as (
    select distinct user_id from raw.users where coalesce(_file_date < $run_date, true) and user_id is not null
),

final as (
    select
        _row_key,
        _source_file,
        campaign_id,
        user_id,
        sent_at,
        greatest(sent_at, opened_at, clicked_at, converted_at) as _latest_event_at,
        revenue_cents,
        propensity,
        len(_invalid_columns) as _n_invalid_values,
        user_id in (select user_id from known_users) as _user_is_known
    from this_run
)

select * from final
