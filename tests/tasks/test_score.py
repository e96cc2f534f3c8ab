from __future__ import annotations

import polars as pl
import pytest

from tailor.config import CHANNEL_CONSENT, ComputeConfig
from tailor.sql import materialize
from tailor.tasks.repeats import load as load_repeats
from tailor.tasks.score import recommendation_params, score_users
from tailor.warehouse import connect


@pytest.fixture(scope="module")
def scored(trained_company):
    settings, ctx, models, _ = trained_company
    counts = score_users(settings, ctx, models)
    return settings, ctx, models, counts


SCORED_TABLES = ("model.scored_candidates", "model.audience_scores", "model.scored_users",
                 "marts.recommendations", "marts.user_scores")  # fmt: skip


def test_the_shard_count_changes_no_score_and_no_recommendation(scored) -> None:
    settings, ctx, models, counts = scored
    with connect(settings) as con:
        before = {table: con.execute(f"select * from {table} order by all").fetchall() for table in SCORED_TABLES}
    sharded = score_users(settings.model_copy(update={"compute": ComputeConfig(shards=3)}), ctx, models)
    assert sharded == counts | {"shards": 3}
    with connect(settings) as con:
        for table in SCORED_TABLES:
            assert con.execute(f"select * from {table} order by all").fetchall() == before[table], table
    assert not (ctx.run_dir / "scoring").exists()


def one(con, sql: str, params: dict | None = None):
    return con.execute(sql, params or {}).fetchall()[0]


def test_every_reachable_user_has_k_ranked_live_items_within_the_category_cap(scored) -> None:
    settings, ctx, _, counts = scored
    k, cap = settings.recommendations.k, settings.recommendations.max_per_category
    assert counts["recommendations"] > 0
    with connect(settings) as con:
        sizes = one(
            con,
            "select min(n), max(n), bool_and(ranks_ok), count(*) from ("
            "  select user_id, count(*) as n, list(rank order by rank) = range(1, count(*) + 1) as ranks_ok"
            "  from marts.recommendations group by user_id)",
        )
        reachable = one(
            con,
            "select count(distinct user_id) from staging.stg_consents where is_latest and is_granted "
            "and purpose in ('marketing_email', 'marketing_push', 'profiling')",
        )[0]
        most_in_a_category = one(
            con,
            "select max(n) from (select user_id, item_category, count(*) n from marts.recommendations group by all)",
        )[0]
        not_live = one(
            con,
            "select count(*) from marts.recommendations r join staging.stg_items i using (item_id) "
            "where i.is_latest and (not i.is_available or i.expires_at <= $c or i.published_at >= $c)",
            {"c": ctx.cutoff},
        )[0]
        ordered = one(
            con,
            "select bool_and(score >= next_score) from (select score, lead(score) over "
            "(partition by user_id, is_personalized order by rank) as next_score from marts.recommendations) "
            "where next_score is not null",
        )[0]
    assert sizes[0] == sizes[1] == k and sizes[2] is True
    assert sizes[3] == reachable  # nobody reachable is left without recommendations
    assert most_in_a_category <= cap and not_live == 0 and ordered is True


def test_personalized_rows_need_profiling_and_history_and_nobody_gets_bought_items(scored) -> None:
    settings, ctx, _, _ = scored
    with connect(settings) as con:
        by_kind = dict(
            con.execute(
                "select coalesce(fallback_reason, 'personalized'), count(distinct user_id) "
                "from marts.recommendations group by 1"
            ).fetchall()
        )
        personalized_without_profiling = one(
            con,
            "select count(*) from marts.recommendations r where (is_personalized or fallback_reason is null) "
            "and user_id not in (select user_id from staging.stg_consents "
            "where is_latest and purpose = 'profiling' and is_granted)",
        )[0]
        mixed = one(
            con,
            "select count(*) from marts.recommendations where fallback_reason is not null and is_personalized",
        )[0]
        bought = one(
            con,
            "select count(*) from marts.recommendations r join staging.stg_interactions i using (user_id, item_id) "
            "where i.event_type = 'purchase' and i.occurred_at < $c",
            {"c": ctx.cutoff},
        )[0]
        fallback_model = one(
            con,
            "select count(*) from marts.recommendations where not is_personalized and model_version is not null",
        )[0]
    assert by_kind.get("personalized", 0) > 0 and by_kind.get("no_profiling_consent", 0) > 0
    assert personalized_without_profiling == 0 and mixed == 0 and bought == 0 and fallback_model == 0


def test_channels_are_exactly_the_users_consented_channels(scored) -> None:
    settings, _, _, _ = scored
    purposes = [CHANNEL_CONSENT[c] for c in settings.recommendations.channels]
    with connect(settings) as con:
        wrong = one(
            con,
            """
            with expected as (
                select user_id, string_agg(c.channel, ',' order by c.channel) as channels
                from staging.stg_consents s
                join (select unnest($channels) as channel, unnest($purposes) as purpose) c using (purpose)
                where s.is_latest and s.is_granted group by user_id
            )
            select count(*) from (select distinct user_id, channels from marts.recommendations) r
            left join expected e using (user_id) where e.channels is distinct from r.channels
            """,
            {"channels": list(settings.recommendations.channels), "purposes": purposes},
        )[0]
    assert wrong == 0


def test_a_new_item_boost_moves_new_items_up(scored) -> None:
    settings, ctx, models, _ = scored
    # users whose list has a non-new item ranked above a new one
    query = (
        "select count(*) from (select r.user_id, max(r.rank) filter (where e.days_since_published <= $days) "
        "as last_new, min(r.rank) filter (where e.days_since_published > $days) as first_old "
        "from marts.recommendations r join features.ranking_examples e "
        "on e.cutoff = $c and e.user_id = r.user_id and e.item_id = r.item_id "
        "where r.is_personalized group by r.user_id) where last_new > first_old"
    )
    params = {"c": ctx.cutoff, "days": settings.ranking.new_item_days}
    with connect(settings) as con:
        params_now = recommendation_params(settings, ctx, models["ranking"], load_repeats(con, ctx.run_date))
        plain = params_now | {"new_item_boost": 0.0}
        materialize(con, "marts/recommendations", plain)
        before = one(con, query, params)[0]
        materialize(con, "marts/recommendations", plain | {"new_item_boost": 100.0})
        after = one(con, query, params)[0]
        materialize(con, "marts/recommendations", params_now)
    assert before > 0 and after == 0


def test_user_scores_cover_profiled_users_in_deciles(scored) -> None:
    settings, _, _, counts = scored
    with connect(settings) as con:
        deciles = one(
            con, "select min(propensity_decile), max(propensity_decile), count(*) from marts.user_scores"
        )
    assert deciles[:2] == (1, 10) and deciles[2] == counts["scored_users"]


def test_a_ranker_that_loses_to_its_baseline_does_not_serve_and_the_rows_say_what_served(scored) -> None:
    from tailor.tasks.train import baseline_verdict

    settings, ctx, models, _ = scored
    ranking = models["ranking"]
    # a margin no ranker can clear: the best baseline on the holdout must serve instead
    strict = settings.model_copy(
        update={"registry": settings.registry.model_copy(update={"baseline_margin": 1.0})}
    )
    served_by, warning = baseline_verdict("ranking", ranking, ranking["metrics"], strict)
    best = ranking["metrics"]["baseline"]["name"]
    assert served_by == f"baseline:{best}" and warning and "does not beat" in warning
    try:
        score_users(settings, ctx, models | {"ranking": ranking | {"served_by": served_by}})
        with connect(settings) as con:
            rows = con.execute(
                "select served_by, count(*), count(model_version) from marts.recommendations "
                "where is_personalized group by all order by all"
            ).fetchall()
            # the baseline's order: per user, the personalized rows follow the baseline's own scores
            out_of_order = one(
                con,
                "select count(*) from (select r.user_id, r.rank, e.popularity_rank, "
                "lag(e.popularity_rank) over (partition by r.user_id order by r.rank) as previous "
                "from marts.recommendations r join features.ranking_examples e "
                "on e.cutoff = $c and e.user_id = r.user_id and e.item_id = r.item_id "
                "where r.is_personalized and e.n_user_item_purchases = 0) where previous > popularity_rank",
                {"c": ctx.cutoff},
            )[0]
    finally:
        score_users(settings, ctx, models)
    assert rows and all(name == f"baseline:{best}" and versions == 0 for name, _, versions in rows)
    if best == "popularity":
        assert out_of_order == 0
    with connect(settings) as con:
        assert one(con, "select count(*) from marts.recommendations where served_by like 'baseline:%'")[0] == 0


def test_a_model_with_constant_predictions_never_serves(scored) -> None:
    from tailor.tasks.train import baseline_verdict

    settings, _, models, _ = scored
    ranking = models["ranking"]
    constant = ranking | {"metrics": ranking["metrics"] | {"is_constant": True, "ndcg_at_10": 1.0}}
    served_by, warning = baseline_verdict("ranking", constant, ranking["metrics"], settings)
    assert served_by.startswith("baseline:") and "all equal" in warning
    conversion = {"metrics": {"is_constant": True, "roc_auc": 0.9}}
    assert baseline_verdict("conversion_c__v", conversion, conversion["metrics"], settings)[0] == (
        "baseline:constant_rate"
    )
    engagement = {"metrics": {"is_constant": True, "roc_auc": 0.9}}
    assert baseline_verdict("engagement", engagement, engagement["metrics"], settings)[0] is None


def test_a_baseline_that_cannot_be_measured_leaves_the_model_serving(scored) -> None:
    from tailor.tasks.train import baseline_verdict

    settings, _, models, _ = scored
    propensity = models["propensity"]
    unmeasurable = {name: values | {"roc_auc": float("nan")}
                    for name, values in propensity["metrics"]["baselines"].items()}  # fmt: skip
    metrics = propensity["metrics"] | {"baselines": unmeasurable}
    assert baseline_verdict("propensity", propensity, metrics, settings) == ("model", None)
    beaten = {name: values | {"roc_auc": 0.99} for name, values in propensity["metrics"]["baselines"].items()}
    served_by, warning = baseline_verdict("propensity", propensity, metrics | {"baselines": beaten}, settings)
    assert served_by.startswith("baseline:") and "does not beat" in warning


def test_one_feature_matrix_serves_every_model_with_the_scores_each_gives_alone(scored) -> None:
    import lightgbm as lgb
    import numpy as np

    from tailor.tasks.score import score_candidates
    from tailor.tasks.train import RANKING_FEATURES, feature_matrix, predict_propensity

    settings, ctx, models, _ = scored
    assert {"ranking", "engagement"} <= set(models)
    # a discovery ranker reads the same features: the ranker's file stands in for one
    models = models | {"discovery": models["ranking"]}
    with connect(settings) as con:
        candidates = con.sql(
            "select * from features.ranking_examples where cutoff = $cutoff order by user_id, item_id",
            params={"cutoff": ctx.cutoff},
        ).pl()
    scored_rows, audience = score_candidates(candidates, models)
    own = feature_matrix(candidates, RANKING_FEATURES, {})
    assert models["ranking"].get("served_by", "model") == "model"
    for name, column in (("ranking", "score"), ("discovery", "discovery_score")):
        alone = lgb.Booster(model_file=models[name]["path"]).predict(own)
        assert np.array_equal(scored_rows[column].to_numpy(), alone), name
    is_audience = candidates["is_audience_item"].to_numpy()
    assert audience.height == int(is_audience.sum()) > 0
    assert audience["user_id"].to_list() == candidates.filter(pl.col("is_audience_item"))["user_id"].to_list()
    engagement = models["engagement"]
    alone = predict_propensity(lgb.Booster(model_file=engagement["path"]), own[is_audience],
                               engagement["params"]["calibration"])  # fmt: skip
    assert np.array_equal(audience["engagement_probability"].to_numpy(), alone)
