-- One customer per "Customer ID", known from their first invoice (the data has no sign-up date), in the
-- country most of their invoices name. The data set holds no age, gender or e-mail.
with source as (
    select * from read_parquet($file)
),

customers as (
    select
        cast(cast("Customer ID" as bigint) as varchar) as user_id,
        min(InvoiceDate) as first_invoiced_at,
        mode(Country) as country
    from source
    where "Customer ID" is not null
    group by all
),

final as (
    select user_id, cast(first_invoiced_at as varchar) as created_at, country, 'en' as language
    from customers
)

select * from final
