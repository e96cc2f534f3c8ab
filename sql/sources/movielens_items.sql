-- MovieLens u.item (id|title|release date|video release|url|19 genre flags): the first genre flagged
-- is the item's category; the release date is when it was published.
with source as (
    select *
    from read_csv(
        $file, delim = '|', header = false, quote = '', encoding = 'latin-1',
        columns = {
            'item_id': 'VARCHAR', 'title': 'VARCHAR', 'released': 'VARCHAR', 'video_released': 'VARCHAR',
            'url': 'VARCHAR', 'g0': 'INTEGER', 'g1': 'INTEGER', 'g2': 'INTEGER', 'g3': 'INTEGER', 'g4': 'INTEGER',
            'g5': 'INTEGER', 'g6': 'INTEGER', 'g7': 'INTEGER', 'g8': 'INTEGER', 'g9': 'INTEGER', 'g10': 'INTEGER',
            'g11': 'INTEGER', 'g12': 'INTEGER', 'g13': 'INTEGER', 'g14': 'INTEGER', 'g15': 'INTEGER',
            'g16': 'INTEGER', 'g17': 'INTEGER', 'g18': 'INTEGER'
        }
    )
),

genres as (
    select
        item_id,
        list_position(
            [g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, g10, g11, g12, g13, g14, g15, g16, g17, g18], 1
        ) as first_genre
    from source
),

final as (
    select
        source.item_id,
        source.title,
        [
            'unknown', 'action', 'adventure', 'animation', 'children', 'comedy', 'crime', 'documentary',
            'drama', 'fantasy', 'film-noir', 'horror', 'musical', 'mystery', 'romance', 'sci-fi',
            'thriller', 'war', 'western'
        ][coalesce(genres.first_genre, 1)] as category,
        coalesce(cast(try_strptime(source.released, '%d-%b-%Y') as varchar), '1990-01-01 00:00:00')
            as published_at,
        'true' as is_available
    from source
    inner join genres using (item_id)
)

select * from final
