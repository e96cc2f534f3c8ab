-- What a campaign's templates may see for each assigned user: country, language and the top
-- $items_in_context recommended items (none for users without recommendations).
with assignments as (
    select user_id, variant_id, is_holdout
    from marts.mart_campaign_assignments
    where campaign_id = $campaign_id
),

final as (
    select
        assignments.user_id,
        assignments.variant_id,
        assignments.is_holdout,
        users.country,
        users.language,
        list(
            struct_pack(item_id := recs.item_id, title := recs.item_title, category := recs.item_category)
            order by recs.rank
        ) filter (where recs.item_id is not null) as items
    from assignments
    inner join staging.stg_users as users on users.user_id = assignments.user_id and users.is_latest
    left join marts.mart_recommendations as recs
        on recs.user_id = assignments.user_id and recs.rank <= $items_in_context
    group by all
    order by assignments.user_id
)

select * from final
