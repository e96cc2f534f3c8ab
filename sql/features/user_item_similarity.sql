-- Per user and item, as of $cutoff: how strongly the item co-occurs with the user's recent items
-- (sum and maximum of Jaccard similarities), and the recent item it is most similar to. One table
-- that candidate generation, the ranker's features and the "because you viewed" reasons all read.
with pairs as (
    select
        recent.user_id,
        recent.item_id as seed_item_id,
        co.neighbour_id as item_id,
        co.jaccard
    from features.user_recent_items as recent
    inner join features.item_cooccurrence as co
        on co.cutoff = recent.cutoff and co.item_id = recent.item_id
    where recent.cutoff = $cutoff and md5_number(recent.user_id) % $buckets = $bucket
),

final as (
    select
        $cutoff as cutoff,
        user_id,
        item_id,
        -- summed in a fixed order: float sums must not depend on how threads split the work
        sum(jaccard order by seed_item_id) as cooccurrence_score,
        max(jaccard) as max_cooccurrence,
        count(*) as n_similar_recent_items,
        first(seed_item_id order by jaccard desc, seed_item_id) as seed_item_id
    from pairs
    group by user_id, item_id
)

select * from final
