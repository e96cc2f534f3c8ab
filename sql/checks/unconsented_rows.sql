-- Rows about to be published for a user whose latest consent does not grant the purpose the row
-- needs. `publish_required_consent` (user_id, purpose) is registered by the publish step.
with granted as (
    select user_id, purpose
    from staging.stg_consents
    where is_latest and is_granted
),

final as (
    select required.user_id, required.purpose
    from publish_required_consent as required
    anti join granted using (user_id, purpose)
)

select * from final
