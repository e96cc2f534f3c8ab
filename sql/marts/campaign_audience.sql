-- Who campaign $campaign_id may reach tonight: every user whose latest consents grant every purpose in
-- $consent_purposes (the channel's marketing consent, and any the audience adds) and, when the campaign names segments, whose RFM segment is one of $segments. Three independent md5
-- draws of (salt, campaign, user) decide the holdout, the variant and exploration, so a user keeps them
-- from night to night until the salt changes.
with consented as (
    select user_id
    from staging.stg_consents
    where is_latest and is_granted and list_contains($consent_purposes, purpose)
    group by user_id
    having count(distinct purpose) = len($consent_purposes)
),

profiled as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

users as (
    select profile.user_id, profile.country, profile.language, segments.rfm_segment
    from staging.stg_users as profile
    semi join consented using (user_id)
    left join marts.segments as segments using (user_id)
    where profile.is_latest
        and (len($segments) = 0 or list_contains($segments, segments.rfm_segment))
),

final as (
    select
        users.user_id,
        users.country,
        users.language,
        coalesce(users.rfm_segment, 'unknown') as segment,
        users.user_id in (select user_id from profiled) as allows_profiling,
        (md5_number(concat($salt, '|', $campaign_id, '|holdout|', users.user_id)) % 1000000) / 1000000.0
            as holdout_draw,
        (md5_number(concat($salt, '|', $campaign_id, '|variant|', users.user_id)) % 1000000) / 1000000.0
            as variant_draw,
        (md5_number(concat($salt, '|', $campaign_id, '|explore|', users.user_id)) % 1000000) / 1000000.0
            as explore_draw
    from users
    order by users.user_id
)

select * from final
