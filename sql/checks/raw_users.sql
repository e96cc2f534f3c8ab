-- The users this run loaded, as the gate checks them.
with final as (
    select
        _row_key,
        _source_file,
        user_id,
        created_at,
        len(_invalid_columns) as _n_invalid_values
    from raw.users
    where _loaded_run_date = $run_date and list_contains($files, _source_file)
)

select * from final
