-- One product per stock code (upper-cased, trimmed), first offered on its first sale, described as it was
-- then: its title is the description of its first sale (a code can carry up to 9 spellings), its category the
-- last word of that title ("JUMBO BAG RED RETROSPOT" -> bag), the product type in this catalogue's naming,
-- and its price the unit price of that sale. Nothing about a product comes from later sales, so an evaluation
-- that holds out the last weeks does not see them through the catalogue.
with source as (
    select * from read_parquet($file)
),

sales as (
    select upper(trim(StockCode)) as item_id, Description as description, Price as price, InvoiceDate
    from source
    where Price > 0
),

products as (
    select
        item_id,
        -- the first sale's line; ties at the same instant by description then price, for one answer
        arg_min(trim(description), (InvoiceDate, description is null, description, price)) as title,
        arg_min(price, (InvoiceDate, description is null, description, price)) as first_price,
        min(InvoiceDate) as first_sold_at
    from sales
    group by item_id
),

final as (
    select
        item_id,
        coalesce(title, item_id) as title,
        coalesce(nullif(lower(regexp_extract(title, '([A-Za-z]{3,})[^A-Za-z]*$', 1)), ''), 'other') as category,
        cast(round(first_price * 100) as bigint) as price_cents,
        cast(first_sold_at as varchar) as published_at,
        'true' as is_available
    from products
)

select * from final
