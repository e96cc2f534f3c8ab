-- One product per stock code (upper-cased, trimmed), first offered on its first sale. Its title is its most
-- frequent description (a code can carry up to 9 spellings); its category the last word of that title
-- ("JUMBO BAG RED RETROSPOT" -> bag), the product type in this catalogue's naming; its price the median
-- unit price of its sales.
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
        mode(trim(description)) as title,
        median(price) as median_price,
        min(InvoiceDate) as first_sold_at
    from sales
    group by item_id
),

final as (
    select
        item_id,
        coalesce(title, item_id) as title,
        coalesce(nullif(lower(regexp_extract(title, '([A-Za-z]{3,})[^A-Za-z]*$', 1)), ''), 'other') as category,
        cast(round(median_price * 100) as bigint) as price_cents,
        cast(first_sold_at as varchar) as published_at,
        'true' as is_available
    from products
)

select * from final
