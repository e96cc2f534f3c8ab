-- One row per candidate as of $cutoff: user, item and user-item features, and the graded relevance
-- of what the user did with the item in the $label_days after the cutoff (0 for a scoring cutoff).
with candidates as (
    -- one bucket of users at a time (see tailor/sql.py): every window below is per user. Read by the
    -- bucket each row was built in: a filter on the table's own column skips the other buckets' row
    -- groups, where a join with the bucket's users read every candidate and joined them before filtering
    select * from features.candidates where cutoff = $cutoff and user_bucket = $bucket
),

events as (
    -- what the user did with the item before the cutoff (30 days) and after it (the label)
    select
        user_id,
        item_id,
        n_user_item_events_30d,
        max_user_item_relevance_30d,
        date_diff('second', last_event_at_30d, $cutoff) / 86400.0 as days_since_user_item_event,
        label_relevance
    from features.user_item_events
    where cutoff = $cutoff and user_bucket = $bucket
),

top_item as (
    -- the most popular live item is a candidate for everyone: the same scale in every bucket
    select max(n_users_recent) as n_users_recent
    from features.item_features
    where cutoff = $cutoff and is_live
),

similarity as (
    -- only this bucket's pairs: the whole table is the largest in the warehouse
    select * from features.user_item_similarity where cutoff = $cutoff and user_bucket = $bucket
),

cooccurrence as (
    -- scale-free versions: training windows and the scoring window hold different amounts of data
    -- (among the user's recommendation candidates: items scored only for an audience stay apart, so
    -- configuring an audience never changes what the ranker sees). Ranked on these few columns alone: a
    -- window over the whole row sorted every feature with it, the stage's largest cost
    select
        candidates.user_id,
        candidates.item_id,
        coalesce(similarity.cooccurrence_score, 0) as cooccurrence_score,
        coalesce(similarity.max_cooccurrence, 0) as max_cooccurrence,
        coalesce(similarity.n_similar_recent_items, 0) as n_similar_recent_items,
        coalesce(similarity.cooccurrence_score, 0)
            / greatest(max(coalesce(similarity.cooccurrence_score, 0)) over per_user, 1e-9)
            as cooccurrence_relative,
        percent_rank() over (per_user order by coalesce(similarity.cooccurrence_score, 0))
            as cooccurrence_percentile
    from candidates
    left join similarity
        on similarity.user_id = candidates.user_id and similarity.item_id = candidates.item_id
    window per_user as (partition by candidates.user_id, candidates.is_audience_only)
),

purchases as (
    select * from features.user_item_purchases where cutoff = $cutoff and user_bucket = $bucket
),

repurchase as (
    select * from features.item_repurchase where cutoff = $cutoff
),

final as (
    select
        -- keys
        candidates.cutoff,
        candidates.user_id,
        candidates.item_id,
        items.category,
        -- candidate sources
        candidates.is_from_popular,
        candidates.is_from_category,
        candidates.is_from_recent,
        candidates.is_from_similar,
        candidates.is_from_new,
        candidates.is_from_buy_again,
        candidates.is_audience_item,
        candidates.is_audience_only,
        -- user
        users.n_events_7d,
        users.n_events_30d,
        users.n_distinct_items_30d,
        users.n_purchases_90d,
        users.days_since_last_event,
        -- item
        items.price_cents,
        items.days_since_published,
        items.n_users_recent,
        items.n_purchases_recent,
        items.trend_ratio,
        items.popularity_rank,
        -- user x item
        coalesce(affinity.affinity, 0) as user_category_affinity,
        coalesce(affinity.affinity_share, 0) as user_category_affinity_share,
        coalesce(affinity.category_rank, 99) as user_category_rank,
        coalesce(events.n_user_item_events_30d, 0) as n_user_item_events_30d,
        coalesce(events.max_user_item_relevance_30d, 0) as max_user_item_relevance_30d,
        events.days_since_user_item_event,
        cooccurrence.cooccurrence_score,
        cooccurrence.max_cooccurrence,
        cooccurrence.n_similar_recent_items,
        -- repurchase: how often and how lately the user bought the item, their cycle and the item's
        coalesce(purchases.n_user_item_purchases, 0) as n_user_item_purchases,
        purchases.days_since_user_item_purchase,
        purchases.user_item_interval_days,
        coalesce(purchases.user_item_basket_share, 0) as user_item_basket_share,
        repurchase.item_repurchase_interval_days,
        coalesce(repurchase.item_repeat_share, 0) as item_repeat_share,
        -- above 1: the user is due to buy it again; unknown while no cycle is known (greatest() skips nulls)
        case
            when coalesce(purchases.user_item_interval_days, repurchase.item_repurchase_interval_days) is not null
                then purchases.days_since_user_item_purchase / greatest(
                    coalesce(purchases.user_item_interval_days, repurchase.item_repurchase_interval_days), 1
                )
        end as repurchase_due_ratio,
        cooccurrence.cooccurrence_relative,
        cooccurrence.cooccurrence_percentile,
        items.n_users_recent / greatest((select max(n_users_recent) from top_item), 1) as popularity_relative,
        -- label
        coalesce(events.label_relevance, 0) as relevance
    from candidates
    inner join features.user_features as users
        on users.cutoff = candidates.cutoff and users.user_id = candidates.user_id
    inner join features.item_features as items
        on items.cutoff = candidates.cutoff and items.item_id = candidates.item_id
    left join features.user_category_affinity as affinity
        on affinity.cutoff = candidates.cutoff
        and affinity.user_id = candidates.user_id
        and affinity.category = items.category
    left join events
        on events.user_id = candidates.user_id and events.item_id = candidates.item_id
    inner join cooccurrence
        on cooccurrence.user_id = candidates.user_id and cooccurrence.item_id = candidates.item_id
    left join purchases
        on purchases.user_id = candidates.user_id and purchases.item_id = candidates.item_id
    left join repurchase
        on repurchase.item_id = candidates.item_id
)

select * from final
