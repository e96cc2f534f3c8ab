-- Past campaign sends as of $cutoff, each with the user's features from the latest snapshot taken at or
-- before the send (point in time), the variant sent ('holdout': not contacted) and whether the user
-- clicked and converted: what the per-variant "conversion given the variant" models and the no-contact
-- model of the uplift learner learn from. Profiling needs consent.
with consented as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

sends as (
    select campaign_id, variant_id, user_id, sent_at, clicked_at, converted_at
    from staging.stg_campaign_exposures
    semi join consented using (user_id)
    where sent_at < $cutoff and known_on < $cutoff_day
    qualify row_number() over (partition by campaign_id, user_id, sent_at order by known_on desc) = 1
),

snapshots as (
    select distinct cutoff as snapshot_at
    from features.user_features
    where cutoff <= $cutoff
),

matched as (
    select
        sends.*,
        (select max(snapshot_at) from snapshots where snapshot_at <= sends.sent_at) as snapshot_at
    from sends
),

final as (
    select
        $cutoff as cutoff,
        matched.campaign_id,
        matched.variant_id,
        matched.sent_at,
        matched.clicked_at is not null and matched.clicked_at < $cutoff as is_clicked,
        matched.converted_at is not null and matched.converted_at < $cutoff as is_converted,
        users.* exclude (cutoff)
    from matched
    inner join features.user_features as users
        on users.cutoff = matched.snapshot_at and users.user_id = matched.user_id
)

select * from final
