-- MovieLens has no consent records; the research licence covers modelling, so each user's
-- `profiling` purpose is granted (and nothing is ever sent to them).
with source as (
    select *
    from read_csv(
        $file, delim = '|', header = false,
        columns = {'user_id': 'VARCHAR', 'age': 'VARCHAR', 'gender': 'VARCHAR', 'occupation': 'VARCHAR', 'zip': 'VARCHAR'}
    )
),

final as (
    select user_id, 'profiling' as purpose, 'true' as is_granted, '1997-09-01 00:00:00' as updated_at
    from source
)

select * from final
