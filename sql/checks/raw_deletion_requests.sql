-- The deletion requests this run loaded and the erasure step could not honour (it consumes the others).
with this_run as (
    select *
    from raw.deletion_requests
    where _loaded_run_date = $run_date and list_contains($files, _source_file)
),

final as (
    select
        _row_key,
        _source_file,
        user_id,
        requested_at,
        len(_invalid_columns) as _n_invalid_values
    from this_run
)

select * from final
