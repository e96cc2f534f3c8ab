-- Top-$k items for every user who consented to at least one of the configured channels, with a reason a
-- marketer can read. Users who allow profiling and have enough history get the ranker's order, after the
-- business rules: bought, expired and unavailable items never reach candidates; new items get
-- $new_item_boost; at most $max_per_category items per category. Everyone else (no profiling consent,
-- or fewer than $min_history_events events) gets the non-personalized fallback, popular in their country,
-- flagged as such; a personalized list short of $k is filled from the same fallback. Items in the user's
-- events of $excluded_event_types never appear; where repeat purchases are allowed, what the user buys
-- again says so ("You buy this every 2 weeks").
with channel_purposes as (
    select unnest($channels) as channel, unnest($channel_purposes) as purpose
),

granted as (
    select user_id, purpose
    from staging.stg_consents
    where is_latest and is_granted
),

reachable as (
    -- the channels each user may be reached on; a user with none gets no recommendations at all
    select granted.user_id, string_agg(channel_purposes.channel, ',' order by channel_purposes.channel) as channels
    from granted
    inner join channel_purposes using (purpose)
    group by granted.user_id
),

history as (
    select user_id, count(*) as n_events
    from staging.stg_interactions
    where occurred_at < $cutoff and occurred_at >= $cutoff - to_days(cast($history_days as integer))
    group by user_id
),

users as (
    select
        reachable.user_id,
        reachable.channels,
        coalesce(profile.country, '') as country,
        profiled.user_id is not null as allows_profiling,
        coalesce(history.n_events, 0) as n_history_events
    from reachable
    inner join staging.stg_users as profile on profile.user_id = reachable.user_id and profile.is_latest
    left join (select user_id from granted where purpose = $required_consent) as profiled
        on profiled.user_id = reachable.user_id
    left join history on history.user_id = reachable.user_id
),

personalized_users as (
    select user_id
    from users
    where allows_profiling and n_history_events >= $min_history_events
),

personal_candidates as (
    select
        scored.user_id,
        scored.item_id,
        examples.category,
        scored.score
            + case when examples.days_since_published <= $new_item_days then $new_item_boost else 0 end
            as score,
        case
            when examples.n_user_item_purchases > 0 then 'buy_again'
            when examples.days_since_published <= $new_item_days then 'new_in_category'
            when examples.is_from_similar then 'similar_to_viewed'
            when examples.is_from_recent then 'recently_viewed'
            when examples.is_from_category then 'popular_in_your_category'
            else 'popular_now'
        end as reason_code,
        examples.user_item_interval_days,
        examples.n_user_item_purchases = 0 as is_new_to_user,
        scored.discovery_score
    from model.scored_candidates as scored
    semi join personalized_users using (user_id)
    inner join features.ranking_examples as examples
        on examples.cutoff = $cutoff
        and examples.user_id = scored.user_id
        and examples.item_id = scored.item_id
    where not scored.is_audience_only
),

rescored as (
    -- Where a discovery ranker serves, the ranker still decides how many places go to items new to the
    -- user, but discovery decides which new items fill them: the new items' scores, best first, are dealt
    -- out in discovery's order. Items the user bought keep their place.
    select
        personal_candidates.* exclude (score),
        coalesce(slots.score, personal_candidates.score) as score,
        -- equal scores (a baseline's, say) keep discovery's order, not the item ids'
        coalesce(dealt.new_rank, 0) as tiebreak
    from personal_candidates
    left join (
        select
            user_id,
            item_id,
            row_number() over (partition by user_id order by discovery_score desc, item_id) as new_rank
        from personal_candidates
        where is_new_to_user and discovery_score is not null
    ) as dealt using (user_id, item_id)
    left join (
        select
            user_id,
            score,
            row_number() over (partition by user_id order by score desc, item_id) as new_rank
        from personal_candidates
        where is_new_to_user and discovery_score is not null
    ) as slots on slots.user_id = dealt.user_id and slots.new_rank = dealt.new_rank
),

personal_picks as (
    -- diversity first (category cap), then the top $k
    select *, true as is_personalized
    from (
        select
            *,
            row_number() over (partition by user_id, category order by score desc, tiebreak, item_id)
                as rank_in_category
        from rescored
    )
    where $max_per_category is null or rank_in_category <= $max_per_category
    qualify row_number() over (partition by user_id order by score desc, tiebreak, item_id) <= $k
),

short_users as (
    select users.user_id, users.country, users.allows_profiling
    from users
    left join (select user_id, count(*) as n_picks from personal_picks group by user_id) as picks
        using (user_id)
    where coalesce(picks.n_picks, 0) < $k
),

live_items as (
    select item_id, category, popularity_rank
    from features.item_features
    where cutoff = $cutoff and is_live
),

country_popularity as (
    select profile.country, events.item_id, count(distinct events.user_id) as n_users
    from staging.stg_interactions as events
    inner join staging.stg_users as profile on profile.user_id = events.user_id and profile.is_latest
    semi join live_items using (item_id)
    where events.occurred_at < $cutoff
        and events.occurred_at >= $cutoff - to_days(cast($fallback_days as integer))
    group by all
),

fallback_pool as (
    -- per country its most popular live items, then the global most popular: a small country still fills $k
    select country, item_id, n_users::double / max(n_users) over (partition by country) as score,
        0 as tier, 'popular_in_country' as reason_code
    from country_popularity
    qualify row_number() over (partition by country order by n_users desc, item_id) <= 4 * $k

    union all

    select countries.country, live_items.item_id, 1.0 / (1 + live_items.popularity_rank) as score,
        1 as tier, 'popular_now' as reason_code
    from (select distinct country from short_users) as countries
    cross join live_items
    where live_items.popularity_rank <= 4 * $k
),

bought as (
    -- a business rule, not profiling: nobody is offered what they already bought
    select distinct events.user_id, events.item_id
    from staging.stg_interactions as events
    semi join short_users using (user_id)
    where list_contains($excluded_event_types, events.event_type) and events.occurred_at < $cutoff
),

fallback_candidates as (
    select
        short_users.user_id,
        pool.item_id,
        live_items.category,
        pool.score,
        pool.reason_code,
        false as is_personalized,
        pool.tier
    from short_users
    inner join fallback_pool as pool on pool.country = short_users.country
    inner join live_items on live_items.item_id = pool.item_id
    anti join bought on bought.user_id = short_users.user_id and bought.item_id = pool.item_id
    qualify row_number() over (partition by short_users.user_id, pool.item_id order by pool.tier) = 1
),

combined as (
    -- personalized picks first, then the fallback; the category cap holds across both
    select user_id, item_id, category, score, tiebreak, reason_code, is_personalized, 0 as priority,
        user_item_interval_days,
        case when is_new_to_user and discovery_score is not null then $discovery_served_by else $served_by end
            as served_by
    from personal_picks

    union all

    select user_id, item_id, category, score, 0 as tiebreak, reason_code, is_personalized, 1 + tier as priority,
        null as user_item_interval_days, 'fallback' as served_by
    from fallback_candidates
    anti join personal_picks using (user_id, item_id)
),

capped as (
    select *
    from combined
    qualify $max_per_category is null
        or row_number() over (partition by user_id, category order by priority, score desc, tiebreak, item_id)
            <= $max_per_category
),

ranked as (
    select *, row_number() over (partition by user_id order by priority, score desc, tiebreak, item_id) as rank
    from capped
    qualify rank <= $k
),

seeds as (
    -- for a candidate similar to the user's recent items, the recent item it is most similar to, and
    -- whether the user bought it (the reason then says "bought", never "viewed")
    select
        similarity.user_id,
        similarity.item_id,
        similarity.seed_item_id,
        exists (
            select 1
            from staging.stg_interactions as events
            where events.user_id = similarity.user_id
                and events.item_id = similarity.seed_item_id
                and events.event_type = 'purchase'
                and events.occurred_at < $cutoff
        ) as is_seed_bought
    from features.user_item_similarity as similarity
    semi join ranked using (user_id, item_id)
    where similarity.cutoff = $cutoff
),

final as (
    select
        -- keys
        $run_date as run_date,
        ranked.user_id,
        ranked.rank,
        ranked.item_id,
        -- item
        items.title as item_title,
        items.category as item_category,
        -- why
        ranked.score,
        case
            when ranked.reason_code = 'similar_to_viewed' and seed_items.title is null then 'popular_now'
            when ranked.reason_code = 'similar_to_viewed' and seeds.is_seed_bought then 'similar_to_bought'
            else ranked.reason_code
        end as reason_code,
        case
            when ranked.reason_code = 'buy_again' and ranked.user_item_interval_days >= 1
                then 'You buy this every ' || case
                    when ranked.user_item_interval_days < 1.5 then 'day'
                    when ranked.user_item_interval_days < 13.5
                        then cast(round(ranked.user_item_interval_days) as integer) || ' days'
                    when ranked.user_item_interval_days < 59.5
                        then cast(round(ranked.user_item_interval_days / 7) as integer) || ' weeks'
                    else cast(round(ranked.user_item_interval_days / 30.4) as integer) || ' months'
                end
            when ranked.reason_code = 'buy_again' then 'You bought this before'
            when ranked.reason_code = 'new_in_category' then 'New in ' || items.category
            when ranked.reason_code = 'similar_to_viewed' and seeds.is_seed_bought and seed_items.title is not null
                then 'Because you bought ' || seed_items.title
            when ranked.reason_code = 'similar_to_viewed' and seed_items.title is not null
                then 'Because you viewed ' || seed_items.title
            when ranked.reason_code = 'recently_viewed' then 'You looked at this recently'
            when ranked.reason_code = 'popular_in_your_category' then 'Popular in ' || items.category
            when ranked.reason_code = 'popular_in_country' then 'Popular in your country'
            else 'Popular right now'
        end as reason_text,
        -- who
        ranked.is_personalized,
        case
            when users.user_id in (select user_id from personalized_users) then null
            when not users.allows_profiling then 'no_profiling_consent'
            else 'little_history'
        end as fallback_reason,
        users.channels,
        case when ranked.is_personalized then $model_version end as model_version,
        -- which order served the row: 'ranking' (the model), 'discovery' (the ranker of items new to the
        -- user), the baseline that beat a model on the holdout ('baseline:buy_again_popularity', ...), or
        -- 'fallback' (the non-personalized list)
        ranked.served_by
    from ranked
    inner join users on users.user_id = ranked.user_id
    inner join staging.stg_items as items on items.item_id = ranked.item_id and items.is_latest
    left join seeds on seeds.user_id = ranked.user_id and seeds.item_id = ranked.item_id
    left join staging.stg_items as seed_items on seed_items.item_id = seeds.seed_item_id and seed_items.is_latest
)

select * from final
