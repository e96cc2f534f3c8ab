-- Per candidate user and item as of $cutoff, what the user did with the item that candidate generation
-- and the ranking examples read: events in the 30 days before the cutoff, whether seen in the last
-- $recent_days, whether ever an event of $excluded_event_types (never a candidate again), and the graded
-- relevance in the $label_days after the cutoff. One pass over the interactions for every bucket of
-- users, written in bucket order ($buckets buckets, as the later models read them), so a model
-- reading one bucket skips the others' row groups instead of scanning the interactions again.
with users as (
    select user_id, cast(user_hash % $buckets as integer) as user_bucket
    from features.candidate_users
    where cutoff = $cutoff
),

events as (
    select interactions.user_id, interactions.item_id, interactions.event_type, interactions.relevance,
        interactions.occurred_at
    from staging.stg_interactions as interactions
    where (
        interactions.occurred_at >= $cutoff - to_days(greatest(30, cast($recent_days as integer)))
        and interactions.occurred_at < $cutoff + to_days(cast($label_days as integer))
    )
        or (list_contains($excluded_event_types, interactions.event_type) and interactions.occurred_at < $cutoff)
),

final as (
    select
        $cutoff as cutoff,
        users.user_bucket,
        events.user_id,
        events.item_id,
        count(*) filter (
            where events.occurred_at < $cutoff and events.occurred_at >= $cutoff - interval 30 day
        ) as n_user_item_events_30d,
        max(events.relevance) filter (
            where events.occurred_at < $cutoff and events.occurred_at >= $cutoff - interval 30 day
        ) as max_user_item_relevance_30d,
        max(events.occurred_at) filter (
            where events.occurred_at < $cutoff and events.occurred_at >= $cutoff - interval 30 day
        ) as last_event_at_30d,
        coalesce(bool_or(
            events.occurred_at < $cutoff
            and events.occurred_at >= $cutoff - to_days(cast($recent_days as integer))
        ), false) as is_recently_seen,
        coalesce(bool_or(
            list_contains($excluded_event_types, events.event_type) and events.occurred_at < $cutoff
        ), false) as is_excluded,
        max(events.relevance) filter (
            where events.occurred_at >= $cutoff
                and events.occurred_at < $cutoff + to_days(cast($label_days as integer))
        ) as label_relevance
    from events
    inner join users using (user_id)
    group by users.user_bucket, events.user_id, events.item_id
)

select * from final
order by user_bucket
