-- Per user and category, as of $cutoff: interest decayed by age (half-life $half_life_days),
-- weighted by how strong each event is, over the last $history_days days.
with items as (
    select item_id, category
    from staging.stg_items
    where known_on < $cutoff_day
    qualify row_number() over (partition by item_id order by known_on desc) = 1
),

events as (
    select
        interactions.user_id,
        items.category,
        interactions.relevance,
        date_diff('second', interactions.occurred_at, $cutoff) / 86400.0 as age_days
    from staging.stg_interactions as interactions
    inner join items using (item_id)
    where interactions.occurred_at < $cutoff
        and interactions.occurred_at >= $cutoff - to_days(cast($history_days as integer))
),

weighted as (
    select
        user_id,
        category,
        -- summed as decimals: exact, so parallel aggregation order cannot change the result
        cast(sum(cast(relevance * pow(0.5, age_days / $half_life_days) as decimal(18, 12))) as double)
            as affinity
    from events
    group by user_id, category
),

final as (
    select
        -- keys
        $cutoff as cutoff,
        user_id,
        category,
        -- numerics
        affinity,
        affinity / cast(sum(cast(affinity as decimal(18, 12))) over (partition by user_id) as double)
            as affinity_share,
        row_number() over (partition by user_id order by affinity desc, category) as category_rank
    from weighted
)

select * from final
