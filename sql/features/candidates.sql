-- Candidate items per user as of $cutoff, from several sources: globally popular, popular in the
-- user's top categories, similar to the user's recent items (co-occurrence), newly published, items the
-- user interacted with in the last $recent_days, and (where repeats are allowed, $allow_repeat) the
-- user's most often bought items. Items with the user's events in $excluded_event_types and items not
-- live at the cutoff are never candidates. The users are features.candidate_users (in scope,
-- and sampled at a training cutoff), one bucket of them at a time.
with users as (
    select user_id
    from features.candidate_users
    where cutoff = $cutoff and user_hash % $buckets = $bucket
),

live_items as (
    select item_id, category, popularity_rank
    from features.item_features
    where cutoff = $cutoff and is_live
),

popular as (
    select item_id
    from live_items
    where popularity_rank <= (
        select max(popularity_rank) from (
            select popularity_rank from live_items order by popularity_rank limit $n_popular
        )
    )
),

new_items as (
    -- recently published items, most popular first: new content gets a chance before it has a history
    select item_id
    from features.item_features
    where cutoff = $cutoff and is_live and days_since_published <= $new_item_days
    order by popularity_rank
    limit $n_new
),

category_popular as (
    select
        item_id,
        category,
        row_number() over (partition by category order by popularity_rank, item_id) as rank_in_category
    from live_items
),

top_categories as (
    select user_id, category
    from features.user_category_affinity
    where cutoff = $cutoff and category_rank <= $top_categories
),

co_occurring as (
    -- items most co-interacted with the user's recent items
    select similarity.user_id, similarity.item_id
    from features.user_item_similarity as similarity
    semi join live_items using (item_id)
    where similarity.cutoff = $cutoff and similarity.user_bucket = $bucket
    qualify row_number() over (
        partition by similarity.user_id order by similarity.cooccurrence_score desc, similarity.item_id
    ) <= $n_similar
),

recently_seen as (
    select events.user_id, events.item_id
    from features.user_item_events as events
    semi join live_items using (item_id)
    where events.cutoff = $cutoff and events.user_bucket = $bucket and events.is_recently_seen
),

buy_again as (
    -- the user's own staples: what they bought on the most days
    select purchases.user_id, purchases.item_id
    from features.user_item_purchases as purchases
    semi join live_items using (item_id)
    where $allow_repeat and purchases.cutoff = $cutoff and purchases.user_bucket = $bucket
        and purchases.buy_again_rank <= $n_buy_again
),

audience_items as (
    -- scoring only: the items and categories config asks audiences for, so every user is scored on them
    select item_id
    from live_items
    where not $is_training
        and (
            list_contains($audience_item_ids, item_id)
            or (list_contains($audience_categories, category)
                and item_id in (
                    select item_id from category_popular where rank_in_category <= $audience_per_category
                ))
        )
),

bought as (
    select user_id, item_id
    from features.user_item_events
    where cutoff = $cutoff and user_bucket = $bucket and is_excluded
),

unioned as (
    select users.user_id, popular.item_id, 'popular' as candidate_source
    from users
    cross join popular

    union all

    select top_categories.user_id, category_popular.item_id, 'category' as candidate_source
    from top_categories
    semi join users using (user_id)
    inner join category_popular using (category)
    where category_popular.rank_in_category <= $n_per_category

    union all

    select users.user_id, new_items.item_id, 'new' as candidate_source
    from users
    cross join new_items

    union all

    select co_occurring.user_id, co_occurring.item_id, 'similar' as candidate_source
    from co_occurring

    union all

    select recently_seen.user_id, recently_seen.item_id, 'recent' as candidate_source
    from recently_seen

    union all

    select buy_again.user_id, buy_again.item_id, 'buy_again' as candidate_source
    from buy_again

    union all

    select users.user_id, audience_items.item_id, 'audience' as candidate_source
    from users
    cross join audience_items
),

final as (
    select
        -- keys
        $cutoff as cutoff,
        -- the bucket the row was built in: a later model reading one bucket skips the others' row groups
        cast($bucket as integer) as user_bucket,
        unioned.user_id,
        unioned.item_id,
        -- which sources proposed the item
        bool_or(candidate_source = 'popular') as is_from_popular,
        bool_or(candidate_source = 'category') as is_from_category,
        bool_or(candidate_source = 'recent') as is_from_recent,
        bool_or(candidate_source = 'similar') as is_from_similar,
        bool_or(candidate_source = 'buy_again') as is_from_buy_again,
        -- an item an audience is computed for; when it is only that, it is not a recommendation candidate
        bool_or(candidate_source = 'audience') as is_audience_item,
        bool_and(candidate_source = 'audience') as is_audience_only,
        bool_or(candidate_source = 'new') as is_from_new
    from unioned
    anti join bought using (user_id, item_id)
    group by unioned.user_id, unioned.item_id
)

select * from final
