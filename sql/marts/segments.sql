-- Each user who allows profiling, as of $cutoff: the RFM segment of the first configured rule whose every
-- stated condition holds (a NULL condition always holds), and the behavioural cluster learned tonight.
-- Frequency is orders, not lines (user_features' n_purchases_90d counts distinct orders: a basket of many
-- lines is one purchase), and monetary value is revenue net of returns.
with rules as (
    select
        unnest($rule_names) as segment_name,
        unnest(range(len($rule_names))) as rule_order,
        unnest($max_days_since_signup) as max_days_since_signup,
        unnest($max_days_since_purchase) as max_days_since_purchase,
        unnest($min_days_since_purchase) as min_days_since_purchase,
        unnest($max_days_since_activity) as max_days_since_activity,
        unnest($min_purchases_90d) as min_purchases_90d
),

profiled as (
    select user_id
    from staging.stg_consents
    where is_latest and purpose = 'profiling' and is_granted
),

users as (
    select
        user_id,
        days_since_signup,
        -- no event in the 90-day window reads as "long ago"
        coalesce(days_since_last_purchase, 1e9) as days_since_purchase,
        coalesce(days_since_last_event, 1e9) as days_since_activity,
        n_purchases_90d,
        revenue_cents_90d
    from features.user_features
    semi join profiled using (user_id)
    where cutoff = $cutoff
),

matched as (
    select users.user_id, rules.segment_name
    from users
    inner join rules
        on (rules.max_days_since_signup is null or users.days_since_signup <= rules.max_days_since_signup)
        and (rules.max_days_since_purchase is null or users.days_since_purchase <= rules.max_days_since_purchase)
        and (rules.min_days_since_purchase is null or users.days_since_purchase >= rules.min_days_since_purchase)
        and (rules.max_days_since_activity is null or users.days_since_activity <= rules.max_days_since_activity)
        and (rules.min_purchases_90d is null or users.n_purchases_90d >= rules.min_purchases_90d)
    qualify row_number() over (partition by users.user_id order by rules.rule_order) = 1
),

final as (
    select
        -- keys
        $run_date as run_date,
        users.user_id,
        -- segments
        coalesce(matched.segment_name, 'unmatched') as rfm_segment,
        clusters.cluster_id,
        clusters.cluster_name,
        -- the RFM inputs, for BI: orders in 90 days, and their revenue net of returns
        case when users.days_since_purchase < 1e9 then round(users.days_since_purchase, 2) end
            as days_since_last_purchase,
        users.n_purchases_90d,
        cast(users.revenue_cents_90d as bigint) as revenue_cents_90d
    from users
    left join matched using (user_id)
    left join model.user_clusters as clusters using (user_id)
)

select * from final
