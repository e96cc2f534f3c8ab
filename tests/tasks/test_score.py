from __future__ import annotations

from tailor.warehouse import connect
from tasks.score import score_users


def test_recommendations_are_top_k_unbought_live_and_consented(trained_company) -> None:
    settings, ctx, models, _ = trained_company
    counts = score_users.fn(settings, ctx, models)
    k = settings.recommendations.k
    assert counts["mart_recommendations"] > 0
    with connect(settings) as con:
        per_user = con.execute(
            "select max(n), min(n), bool_and(ranks_ok) from ("
            "  select user_id, count(*) as n, list(rank order by rank) = range(1, count(*) + 1) as ranks_ok"
            "  from marts.mart_recommendations group by user_id)"
        ).fetchall()[0]
        bought = con.execute(
            "select count(*) from marts.mart_recommendations r join staging.stg_interactions i "
            "using (user_id, item_id) where i.event_type = 'purchase'"
        ).fetchall()[0][0]
        unconsented = con.execute(
            "select count(*) from marts.mart_recommendations r anti join ("
            "  select user_id from staging.stg_consents where is_latest and purpose = 'profiling' and is_granted"
            ") using (user_id)"
        ).fetchall()[0][0]
        not_live = con.execute(
            "select count(*) from marts.mart_recommendations r join staging.stg_items i using (item_id) where i.is_latest and ("
            "not i.is_available or i.expires_at <= $c or i.published_at >= $c)",
            {"c": ctx.cutoff},
        ).fetchall()[0][0]
        ordered = con.execute(
            "select bool_and(score >= next_score) from (select score, lead(score) over "
            "(partition by user_id order by rank) as next_score from marts.mart_recommendations) "
            "where next_score is not null"
        ).fetchall()[0][0]
        deciles = con.execute(
            "select min(propensity_decile), max(propensity_decile), count(*) from marts.mart_user_propensity"
        ).fetchall()[0]
        reasons = {
            r[0]
            for r in con.execute("select distinct reason_code from marts.mart_recommendations").fetchall()
        }
    assert per_user[0] == k and per_user[2] is True
    assert bought == 0 and unconsented == 0 and not_live == 0 and ordered is True
    assert deciles[:2] == (1, 10) and deciles[2] == counts["scored_users"]
    assert reasons <= {
        "new_in_category",
        "similar_to_viewed",
        "recently_viewed",
        "popular_in_your_category",
        "popular_now",
    }
    assert len(reasons) >= 2
