-- MovieLens u.user (id|age|gender|occupation|zip): users, all known before the first rating (1997-09).
with source as (
    select *
    from read_csv(
        $file, delim = '|', header = false,
        columns = {'user_id': 'VARCHAR', 'age': 'INTEGER', 'gender': 'VARCHAR', 'occupation': 'VARCHAR', 'zip': 'VARCHAR'}
    )
),

final as (
    select
        user_id,
        '1997-09-01 00:00:00' as created_at,
        'US' as country,
        'en' as language,
        case
            when age < 25 then '18-24' when age < 35 then '25-34' when age < 45 then '35-44'
            when age < 55 then '45-54' when age < 65 then '55-64' else '65+'
        end as age_band,
        case gender when 'F' then 'female' when 'M' then 'male' end as gender
    from source
)

select * from final
