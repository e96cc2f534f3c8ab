-- Batch segments in the manner of Personalize's item-affinity jobs: for each configured item, and each
-- configured category, the $top_n users most likely to engage within the label window. A category's
-- score is the chance of engaging with at least one of its $items_per_category most popular live items:
-- 1 - prod(1 - p), the same items the candidates scored for it.
with scores as (
    select scores.user_id, scores.item_id, scores.engagement_probability, items.title, items.category
    from model.audience_scores as scores
    inner join staging.stg_items as items on items.item_id = scores.item_id and items.is_latest
),

item_audiences as (
    select 'item' as audience_type, item_id as audience_id, title as audience_name, user_id,
        engagement_probability as score
    from scores
    where list_contains($item_ids, item_id)
),

category_items as (
    select item_id
    from features.item_features
    where cutoff = $cutoff and is_live and list_contains($categories, category)
    qualify row_number() over (partition by category order by popularity_rank, item_id) <= $items_per_category
),

category_audiences as (
    select 'category' as audience_type, category as audience_id, category as audience_name, user_id,
        -- P(engages with at least one item); the log-sum in fixed point, so it does not depend on row order
        1 - exp(sum(cast(round(ln(greatest(1 - engagement_probability, 1e-12)) * 1e12) as hugeint)) / 1e12)
            as score
    from scores
    semi join category_items using (item_id)
    group by category, user_id
),

unioned as (
    select * from item_audiences
    union all
    select * from category_audiences
),

final as (
    select
        -- keys
        $run_date as run_date,
        audience_type,
        audience_id,
        row_number() over (partition by audience_type, audience_id order by score desc, user_id) as rank,
        -- who
        audience_name,
        user_id,
        score,
        $model_version as model_version
    from unioned
    qualify rank <= $top_n
)

select * from final
