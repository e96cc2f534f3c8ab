-- Item-to-item similarity as of $cutoff: for each item, its $neighbours most similar items by the
-- Jaccard index of the sets of users who recently interacted with them (from user_recent_items). The
-- pairs grow with users x recent items squared, so past $cooccurrence_max_users users a seeded sample of them
-- estimates the index (a ratio of counts, which a uniform sample of users preserves).
with sampling as (
    select least(1.0, $cooccurrence_max_users / greatest(count(distinct user_id), 1)) as rate
    from features.user_recent_items
    where cutoff = $cutoff
),

recent as (
    select user_id, item_id
    from features.user_recent_items
    where cutoff = $cutoff
        and (md5_number(concat(cast($seed as varchar), '|cooccurrence|', user_id)) % 1000000) / 1000000.0
            < (select rate from sampling)
),

item_users as (
    select item_id, count(*) as n_users
    from recent
    group by item_id
),

pairs as (
    select
        a.item_id,
        b.item_id as neighbour_id,
        count(*) as n_common_users
    from recent as a
    inner join recent as b on a.user_id = b.user_id and a.item_id <> b.item_id
    group by a.item_id, b.item_id
),

scored as (
    select
        pairs.item_id,
        pairs.neighbour_id,
        pairs.n_common_users,
        pairs.n_common_users / (items_a.n_users + items_b.n_users - pairs.n_common_users) as jaccard
    from pairs
    inner join item_users as items_a on items_a.item_id = pairs.item_id
    inner join item_users as items_b on items_b.item_id = pairs.neighbour_id
    where pairs.n_common_users >= 2
),

final as (
    select
        $cutoff as cutoff,
        item_id,
        neighbour_id,
        n_common_users,
        jaccard
    from scored
    qualify row_number() over (partition by item_id order by jaccard desc, neighbour_id) <= $neighbours
)

select * from final
