-- One row per user with recommendations, in the shape of Amazon Personalize's batch inference output:
-- the ranked item ids and their scores as lists (written as {"input": ..., "output": ...} JSON lines).
with recommendations as (
    select * from marts.recommendations
),

final as (
    select
        -- keys
        $run_date as run_date,
        user_id,
        -- output
        list(item_id order by rank) as recommended_items,
        list(score order by rank) as scores,
        -- consent context
        bool_or(is_personalized) as is_personalized,
        any_value(channels) as channels
    from recommendations
    group by user_id
)

select * from final
