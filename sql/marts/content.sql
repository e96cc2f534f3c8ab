-- Campaign content: each audience user's allocation (model.content_allocation, written by the allocate
-- step) with the copy rendered for them by the render shards ($files; none for the holdout), in the
-- allocation's order.
with allocation as (
    select * from model.content_allocation
),

rendered as (
    select * from read_parquet($files)
),

final as (
    select
        allocation.run_date,
        allocation.campaign_id,
        allocation.channel,
        allocation.consent_purpose,
        allocation.user_id,
        allocation.variant_id,
        allocation.is_holdout,
        allocation.allocation_policy,
        allocation.allocation_reason,
        allocation.is_personalized,
        allocation.expected_conversion,
        allocation.expected_uplift,
        allocation.segment,
        rendered.subject,
        rendered.headline,
        rendered.body,
        rendered.call_to_action,
        rendered.recommended_item_ids
    from allocation
    left join rendered
        on rendered.campaign_id = allocation.campaign_id and rendered.user_id = allocation.user_id
    order by allocation.ordinal
)

select * from final
