-- Online Retail II invoice lines as interactions: every line with a customer id is a purchase of its
-- stock code, with its invoice as the order. Cancellations ("C..." invoices) keep their negative quantity:
-- Tailor nets them out as returns. Lines without a customer cannot be attributed and are dropped, as are
-- zero-price lines (samples and stock adjustments, nearly all without a customer). Stock codes are
-- upper-cased and trimmed ("47503J " and "47503j" are one product). The two sheets overlap by nine days
-- and hold exact duplicate lines: each distinct line is kept once. Non-product codes (postage, fees,
-- manual adjustments) stay: they are real lines of the basket, and the config's exclusion rules keep
-- them out of recommendations.
with source as (
    select * from read_parquet($file)
),

lines as (
    select
        cast(cast("Customer ID" as bigint) as varchar) as user_id,
        upper(trim(StockCode)) as item_id,
        Invoice as order_id,
        Quantity as quantity,
        cast(round(Price * 100) as bigint) as unit_price_cents,
        InvoiceDate as occurred_at
    from source
    where "Customer ID" is not null
),

final as (
    select distinct
        user_id,
        item_id,
        'purchase' as event_type,
        cast(occurred_at as varchar) as occurred_at,
        cast(quantity * unit_price_cents as double) as value,
        order_id,
        quantity,
        unit_price_cents,
        'online' as channel
    from lines
    where unit_price_cents > 0
)

select * from final
