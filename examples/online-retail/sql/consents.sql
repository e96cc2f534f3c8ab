-- The public data set carries no consent records. For this evaluation every customer's `profiling`
-- purpose is granted from their first invoice (models may learn from them) and nothing is ever sent:
-- no marketing purpose is granted. A real company maps its own consent records here.
with source as (
    select * from read_parquet($file)
),

final as (
    select
        cast(cast("Customer ID" as bigint) as varchar) as user_id,
        'profiling' as purpose,
        'true' as is_granted,
        cast(min(InvoiceDate) as varchar) as updated_at
    from source
    where "Customer ID" is not null
    group by all
)

select * from final
