-- The item audiences in the shape of Amazon Personalize's batch segment job output: one row per audience
-- with its users as a list, most likely first (written as JSON lines by the publish step). An item's
-- audience is an Item-Affinity segment ({"input": {"itemId"}, "output": {"recommendedUsers"}}); a
-- category's is an Item-Attribute-Affinity segment, whose input is the query it answers,
-- ITEMS.category = "<category>" (quotes and backslashes escaped with a backslash, as Personalize asks).
with audiences as (
    select * from marts.item_audiences
),

final as (
    select
        -- keys
        $run_date as run_date,
        audience_type,
        audience_id,
        -- Personalize's input
        case
            when audience_type = 'category'
                then 'ITEMS.category = "' || replace(replace(audience_id, '\', '\\'), '"', '\"') || '"'
        end as item_attributes,
        -- Personalize's output
        list(user_id order by rank) as recommended_users,
        any_value(model_version) as model_version
    from audiences
    group by audience_type, audience_id
)

select * from final
