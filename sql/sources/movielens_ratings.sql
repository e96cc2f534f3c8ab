-- MovieLens u.data (user, item, rating, unix time; tab-separated): every rating is an interaction.
with source as (
    select *
    from read_csv(
        $file, delim = '\t', header = false,
        columns = {'user_id': 'VARCHAR', 'item_id': 'VARCHAR', 'rating': 'INTEGER', 'rated_at': 'BIGINT'}
    )
),

final as (
    select
        user_id,
        item_id,
        'rating' as event_type,
        cast(to_timestamp(rated_at) as varchar) as occurred_at,
        cast(rating as double) as value
    from source
)

select * from final
