-- Assignment of every user who consented to $consent_purpose to the holdout or one variant of
-- $campaign_id. Deterministic: two independent md5 draws of (salt, campaign, user) decide the holdout
-- and the variant, so a user keeps their arm from night to night until the salt changes.
with consented as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = $consent_purpose and is_granted
),

users as (
    select user_id
    from staging.stg_users
    semi join consented using (user_id)
    where is_latest
),

draws as (
    select
        user_id,
        (md5_number(concat($salt, '|', $campaign_id, '|holdout|', user_id)) % 1000000) / 1000000.0
            as holdout_draw,
        (md5_number(concat($salt, '|', $campaign_id, '|variant|', user_id)) % 1000000) / 1000000.0
            as variant_draw
    from users
),

variants as (
    select
        unnest($variant_ids) as variant_id,
        unnest($lower_bounds) as lower_bound,
        unnest($upper_bounds) as upper_bound
),

final as (
    select
        -- keys
        $run_date as run_date,
        $campaign_id as campaign_id,
        draws.user_id,
        -- assignment
        case when draws.holdout_draw < $holdout_share then 'holdout' else variants.variant_id end as variant_id,
        draws.holdout_draw < $holdout_share as is_holdout,
        $channel as channel,
        $consent_purpose as consent_purpose
    from draws
    inner join variants
        on draws.variant_draw >= variants.lower_bound and draws.variant_draw < variants.upper_bound
)

select * from final
