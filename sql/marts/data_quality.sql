-- Every data-quality outcome of every run, for BI to chart over time: one row per run date, stage
-- (extract, raw, features, output), table and rule.
with results as (
    select * from meta.data_quality_results
),

final as (
    select
        -- keys
        run_date,
        stage,
        table_name,
        rule,
        -- what was checked
        expectation,
        column_name,
        severity,
        -- outcome
        is_success,
        unexpected_count,
        rows_checked,
        case when rows_checked > 0 then unexpected_count / rows_checked end as unexpected_share,
        unexpected_sample
    from results
)

select * from final
