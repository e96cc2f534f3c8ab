-- Per user, as of $cutoff: the $recent_items items they interacted with most recently in the last
-- $history_days days, with their strongest event: the "because you viewed" seeds.
with recent as (
    select
        user_id,
        item_id,
        max(occurred_at) as last_interacted_at,
        max(relevance) as max_relevance
    from staging.stg_interactions
    where occurred_at < $cutoff
        and occurred_at >= $cutoff - to_days(cast($history_days as integer))
    group by user_id, item_id
),

final as (
    select
        $cutoff as cutoff,
        user_id,
        item_id,
        last_interacted_at,
        max_relevance,
        row_number() over (partition by user_id order by last_interacted_at desc, item_id) as recency_rank
    from recent
    qualify recency_rank <= $recent_items
)

select * from final
