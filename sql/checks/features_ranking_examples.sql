-- features.ranking_examples at the run's cutoff, with how many candidate sources proposed each row.
with final as (
    select
        user_id,
        item_id,
        user_category_affinity_share,
        relevance,
        is_from_popular::int + is_from_category::int + is_from_recent::int + is_from_similar::int
            + is_from_new::int + is_from_buy_again::int + is_audience_item::int as _n_sources
    from features.ranking_examples
    where cutoff = $cutoff
)

select * from final
