-- One row per user with recommendations, in the shape of Amazon Personalize's batch inference output:
-- the ranked item ids and their scores as lists (written as {"input", "output", "error"} JSON lines).
--
-- Scores in Personalize's sense: Personalize scores a user's items with a softmax over the catalogue
-- (positive, summing to 1, higher = more certain). Ours are a softmax over the user's published top-K:
--   score_r = exp(logit_r) / sum_j exp(logit_j)
-- so they lie in (0, 1], sum to 1 per user and never increase with rank, for every kind of list. logit_r is
--   * for a row the ranker (or the baseline that serves for it) ordered: its serving score, which for a
--     LambdaRank model is already a log-scale relevance, so the softmax is its top-1 probability;
--   * for a fallback row: ln of its popularity relative to the most popular item, so a fallback list's
--     softmax is each item's share of the list's popularity (what a popularity recipe means by a score);
--   * then never above the logit of the row before it: a fallback item filling a short personalized list
--     is no likelier than the ranker's weakest pick (the popularity and ranker scales are unrelated);
--   * and at most 20 below the user's first (a factor of about 5e8): baselines' scores can be 1e9 apart,
--     and Personalize never publishes a score of 0.
-- The sum runs over a list in rank order, so a rerun gives the same bits.
with recommendations as (
    select * from marts.recommendations
),

raw_logits as (
    select
        user_id,
        rank,
        item_id,
        is_personalized,
        channels,
        case
            when is_personalized then score
            -- popularity scores are in (0, 1]; the floor only guards the logarithm
            else ln(greatest(score, 1e-12))
        end as raw_logit
    from recommendations
),

monotone as (
    select
        *,
        min(raw_logit) over (
            partition by user_id order by rank rows between unbounded preceding and current row
        ) as running_min,
        first_value(raw_logit) over (partition by user_id order by rank) as top_logit
    from raw_logits
),

weighted as (
    select
        *,
        -- relative to the top logit, so exp never overflows and the first weight is exactly 1
        exp(greatest(running_min, top_logit - 20) - top_logit) as weight
    from monotone
),

lists as (
    select
        user_id,
        list(item_id order by rank) as recommended_items,
        list(weight order by rank) as weights,
        list_sum(list(weight order by rank)) as total_weight,
        bool_or(is_personalized) as is_personalized,
        any_value(channels) as channels
    from weighted
    group by user_id
),

final as (
    select
        -- keys
        $run_date as run_date,
        user_id,
        -- output
        recommended_items,
        list_transform(weights, lambda weight: weight / total_weight) as scores,
        -- consent context
        is_personalized,
        channels
    from lists
)

select * from final
