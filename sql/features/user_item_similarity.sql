-- Per user and item, as of $cutoff: how strongly the item co-occurs with the user's recent items
-- (sum and maximum of Jaccard similarities), and the recent item it is most similar to. One table
-- that candidate generation, the ranker's features and the "because you viewed" reasons all read. Only
-- for features.candidate_users (at a training cutoff, the sample), one bucket of them at a time.
with users as (
    select user_id
    from features.candidate_users
    where cutoff = $cutoff and user_hash % $buckets = $bucket
),

pairs as (
    select
        recent.user_id,
        recent.item_id as seed_item_id,
        co.neighbour_id as item_id,
        co.jaccard
    from features.user_recent_items as recent
    inner join features.item_cooccurrence as co
        on co.cutoff = recent.cutoff and co.item_id = recent.item_id
    semi join users using (user_id)
    where recent.cutoff = $cutoff
),

final as (
    select
        $cutoff as cutoff,
        -- the bucket the row was built in: a later model reading one bucket skips the others' row groups
        cast($bucket as integer) as user_bucket,
        user_id,
        item_id,
        -- summed in fixed point: an integer sum does not depend on how threads split the work, and
        -- unlike an ordered float sum it streams and spills
        sum(cast(round(jaccard * 1e9) as bigint)) / 1e9 as cooccurrence_score,
        max(jaccard) as max_cooccurrence,
        count(*) as n_similar_recent_items,
        -- the most similar seed, the smallest id on a tie (struct order: fields left to right)
        min(struct_pack(negative_jaccard := -jaccard, seed_item_id := seed_item_id)).seed_item_id
            as seed_item_id
    from pairs
    group by user_id, item_id
)

select * from final
