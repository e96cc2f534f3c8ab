-- Top-$k items per user from the ranker's scores, with a reason a marketer can read.
-- Candidates were built only for users whose latest consent allows profiling; the semi join below
-- restates that rule here so the mart can never hold anyone else.
with consented as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = $required_consent and is_granted
),

ranked as (
    select
        user_id,
        item_id,
        score,
        row_number() over (partition by user_id order by score desc, item_id) as rank
    from model.scored_candidates
    semi join consented using (user_id)
    qualify rank <= $k
),

seeds as (
    -- for a candidate similar to the user's recent items, the recent item it is most similar to
    select user_id, item_id, seed_item_id
    from features.user_item_similarity
    where cutoff = $cutoff
),

explained as (
    select
        ranked.*,
        items.title as item_title,
        items.category as item_category,
        seed_items.title as seed_item_title,
        case
            when examples.days_since_published <= $new_item_days then 'new_in_category'
            when examples.is_from_similar and seed_items.title is not null then 'similar_to_viewed'
            when examples.is_from_recent then 'recently_viewed'
            when examples.is_from_category then 'popular_in_your_category'
            else 'popular_now'
        end as reason_code
    from ranked
    inner join features.ranking_examples as examples
        on examples.cutoff = $cutoff
        and examples.user_id = ranked.user_id
        and examples.item_id = ranked.item_id
    inner join staging.stg_items as items on items.item_id = ranked.item_id and items.is_latest
    left join seeds on seeds.user_id = ranked.user_id and seeds.item_id = ranked.item_id
    left join staging.stg_items as seed_items on seed_items.item_id = seeds.seed_item_id and seed_items.is_latest
),

final as (
    select
        -- keys
        $run_date as run_date,
        user_id,
        rank,
        item_id,
        -- item
        item_title,
        item_category,
        -- why
        score,
        reason_code,
        case reason_code
            when 'new_in_category' then 'New in ' || item_category
            when 'similar_to_viewed' then 'Because you viewed ' || seed_item_title
            when 'recently_viewed' then 'You looked at this recently'
            when 'popular_in_your_category' then 'Popular in ' || item_category
            else 'Popular right now'
        end as reason_text,
        $model_version as model_version
    from explained
)

select * from final
