-- Braze's user feed, incrementally: only the users whose payload differs from what Braze holds (see
-- features/braze_held_payloads), each with this publication's UPDATED_AT ($updated_at, later than anything
-- published before). `braze_ids` maps tonight's users to the id Braze knows them by (the published
-- EXTERNAL_ID: the pseudonym, or the id itself when user_updates is published with external ids). A night
-- with nothing changed has no rows. Users who leave go to marts.user_deletes, not here.
with tonight as (
    select
        payloads.user_id,
        ids.external_id,
        payloads.payload,
        md5(payloads.payload) as payload_md5,
        payloads.channels,
        payloads.campaign_purposes,
        payloads.needs_profiling
    from marts.user_update_payloads as payloads
    inner join braze_ids as ids using (user_id)
),

changed as (
    select tonight.*
    from tonight
    left join braze_held as held using (external_id)
    where held.now_md5 is distinct from tonight.payload_md5
        or held.before_md5 is distinct from tonight.payload_md5
),

final as (
    select
        -- keys
        $run_date::date as run_date,
        user_id,
        external_id,
        -- feed
        $updated_at::timestamp as updated_at,
        payload,
        payload_md5,
        -- consent context (not published)
        channels,
        campaign_purposes,
        needs_profiling
    from changed
)

select * from final
