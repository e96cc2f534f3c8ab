-- The fairness audit's raw rates: for every sensitive attribute in $attributes and each of its groups
-- (a missing, blank or 'unknown' value in any spelling is the one group 'unknown', which the audit reports
-- apart and never compares), how often the group is selected by each campaign, given each variant,
-- recommended each item category, and its mean propensity score. Users are as known tonight.
with profiles as (
    select
        user_id,
        cast(country as varchar) as country,
        cast(language as varchar) as language,
        cast(age_band as varchar) as age_band,
        cast(gender as varchar) as gender
    from staging.stg_users
    where is_latest
),

people as (
    select
        user_id,
        attribute,
        case
            when group_value is null or lower(trim(group_value)) in ('', 'unknown') then 'unknown'
            else group_value
        end as group_value
    from profiles
    unpivot include nulls (group_value for attribute in (country, language, age_band, gender))
    where list_contains($attributes, attribute)
),

campaigns as (
    select distinct campaign_id from marts.content
),

reached as (
    select distinct campaign_id, user_id from marts.content
),

campaign_selection as (
    select
        people.attribute,
        people.group_value,
        'campaign' as subject,
        campaigns.campaign_id as subject_id,
        'selected_share' as metric,
        count(*) as users,
        count(reached.user_id) as hits
    from people
    cross join campaigns
    left join reached
        on reached.campaign_id = campaigns.campaign_id and reached.user_id = people.user_id
    group by all
),

contacted as (
    select content.campaign_id, content.variant_id, people.attribute, people.group_value
    from marts.content as content
    inner join people using (user_id)
    where not content.is_holdout
),

variant_arms as (
    select distinct campaign_id, variant_id from contacted
),

contacted_groups as (
    select campaign_id, attribute, group_value, count(*) as users
    from contacted
    group by all
),

variant_share as (
    select
        groups.attribute,
        groups.group_value,
        'variant' as subject,
        arms.campaign_id || '/' || arms.variant_id as subject_id,
        'variant_share' as metric,
        groups.users,
        count(contacted.variant_id) as hits
    from contacted_groups as groups
    inner join variant_arms as arms using (campaign_id)
    left join contacted
        on contacted.campaign_id = arms.campaign_id
        and contacted.variant_id = arms.variant_id
        and contacted.attribute = groups.attribute
        and contacted.group_value = groups.group_value
    group by all
),

recommended as (
    select distinct user_id, item_category from marts.recommendations
),

recommended_people as (
    select people.attribute, people.group_value, count(distinct people.user_id) as users
    from people
    semi join recommended using (user_id)
    group by all
),

categories as (
    select distinct item_category from recommended
),

category_hits as (
    select people.attribute, people.group_value, recommended.item_category, count(*) as hits
    from recommended
    inner join people using (user_id)
    group by all
),

category_exposure as (
    select
        groups.attribute,
        groups.group_value,
        'category' as subject,
        categories.item_category as subject_id,
        'exposed_share' as metric,
        groups.users,
        coalesce(category_hits.hits, 0) as hits
    from recommended_people as groups
    cross join categories
    left join category_hits
        on category_hits.attribute = groups.attribute
        and category_hits.group_value = groups.group_value
        and category_hits.item_category = categories.item_category
),

proportions as (
    select *, hits / users as value, null::double as variance from campaign_selection
    union all
    select *, hits / users as value, null::double as variance from variant_share
    union all
    select *, hits / users as value, null::double as variance from category_exposure
),

propensity as (
    select
        people.attribute,
        people.group_value,
        'propensity' as subject,
        'user_scores' as subject_id,
        'mean_score' as metric,
        count(*) as users,
        null::bigint as hits,
        -- the mean in fixed point, so it does not depend on row order
        sum(cast(round(scores.conversion_probability * 1e12) as hugeint)) / count(*) / 1e12 as value,
        var_samp(scores.conversion_probability) as variance
    from marts.user_scores as scores
    inner join people using (user_id)
    group by all
),

final as (
    select * from proportions
    union all
    select * from propensity
)

select * from final
order by attribute, subject, subject_id, metric, group_value
