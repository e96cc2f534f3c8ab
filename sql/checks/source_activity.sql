-- Rows per file day of each source, over every file dated before the run: the history that volume
-- and freshness checks compare the newest day against.
with final as (
    select
        source,
        file_date,
        sum(row_count) as row_count
    from meta.loaded_files
    where file_date < $run_date
    group by source, file_date
    order by source, file_date
)

select * from final
