-- The items a campaign template may show each user: their top $n recommendations with what a message may
-- say about them.
with top_items as (
    select user_id, rank, item_id, item_title, item_category, reason_text
    from marts.recommendations
    where rank <= $n
),

final as (
    select
        top_items.user_id,
        top_items.item_id,
        top_items.item_title as title,
        top_items.item_category as category,
        items.price_cents,
        top_items.reason_text as reason
    from top_items
    inner join staging.stg_items as items on items.item_id = top_items.item_id and items.is_latest
    order by top_items.user_id, top_items.rank
)

select * from final
