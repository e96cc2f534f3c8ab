from __future__ import annotations

from datetime import datetime

from tailor.tasks.features import build_staging_models
from tailor.tasks.report import exclusions, fairness_section, models_section, render
from tests import tiny


def test_the_report_lists_each_exclusion_rule_with_the_items_it_excludes() -> None:
    settings = tiny.settings(
        recommendations={
            "exclude": {"categories": ["fuel"], "item_id_patterns": ["GIFT%"], "max_price_cents": 10_000}
        }
    )
    con = tiny.warehouse()
    published = datetime(2025, 1, 1)
    tiny.insert(con, "items", [
        {"item_id": "milk", "title": "Milk", "category": "Dairy", "price_cents": 150, "published_at": published},
        {"item_id": "diesel", "title": "Diesel", "category": "Fuel", "price_cents": 160, "published_at": published},
        {"item_id": "petrol", "title": "Petrol", "category": "Fuel", "price_cents": 170, "published_at": published},
        {"item_id": "gift-50", "title": "Gift card", "category": "Cards", "price_cents": 5000, "published_at": published},
    ])  # fmt: skip
    build_staging_models(con, tiny.context(), settings)
    facts = exclusions(con, settings)
    assert (facts["excluded"], facts["total"]) == (3, 4)
    assert {rule["rule"]: (rule["setting"], rule["items"]) for rule in facts["rules"]} == {
        "categories": ("fuel", 2),
        "item_id_patterns": ("GIFT%", 1),
        "max_price_cents": ("price above 10,000 cents", 0),
        "exclude_unavailable": ("marked unavailable", 0),
    }
    html = render(con, settings, tiny.context())
    assert "3 of 4 catalogue items excluded" in html and "<td>fuel</td>" not in html  # settings are text cells
    assert '<td class="text">GIFT%</td><td>1</td>' in html


def test_the_report_shows_unknown_groups_apart_from_the_compared_ones() -> None:
    from tailor.sql import replace_run_rows
    from tailor.tasks.fairness import AUDIT_COLUMNS, ensure_audit_table

    settings, ctx = tiny.settings(), tiny.context()
    con = tiny.warehouse()
    ensure_audit_table(con)
    base = {"run_date": ctx.run_date, "attribute": "gender", "subject": "campaign", "subject_id": "c",
            "metric": "selected_share", "reference_group": "f", "reference_value": 0.5, "is_small_group": False,
            "is_flagged": False}  # fmt: skip
    replace_run_rows(con, "meta.fairness_audit", AUDIT_COLUMNS, [
        base | {"group_value": "f", "users": 1000, "value": 0.5, "disparate_impact_ratio": 1.0, "is_unknown_group": False},
        base | {"group_value": "m", "users": 1000, "value": 0.45, "disparate_impact_ratio": 0.9, "is_unknown_group": False},
        base | {"group_value": "unknown", "users": 1234, "value": 0.05, "disparate_impact_ratio": 0.1, "is_unknown_group": True},
    ], ctx.run_date)  # fmt: skip
    facts = fairness_section(con, settings, ctx)
    assert [(row["group_value"], row["why"]) for row in facts["apart"]] == [("unknown", "unknown group")]
    assert "gender=unknown" not in facts["chart"]  # not among the lowest ratios of the judged groups
    assert "gender=m" in facts["chart"]


def audit_rows(ctx, flagged: list[tuple[str, float]], under: list[tuple[str, float]]) -> list[dict]:
    base = {"run_date": ctx.run_date, "attribute": "age_band", "subject": "campaign", "subject_id": "weekly",
            "metric": "selected_share", "reference_group": "35-44", "reference_value": 0.5,
            "is_small_group": False, "is_unknown_group": False, "users": 900, "p_value": 0.001}  # fmt: skip
    rows = [base | {"group_value": "35-44", "value": 0.5, "disparate_impact_ratio": 1.0, "is_flagged": False}]
    rows += [base | {"group_value": g, "value": 0.5 * r, "disparate_impact_ratio": r, "is_flagged": True,
                     "p_value_adjusted": 0.001} for g, r in flagged]  # fmt: skip
    rows += [base | {"group_value": g, "value": 0.5 * r, "disparate_impact_ratio": r, "is_flagged": False,
                     "p_value_adjusted": 0.4} for g, r in under]  # fmt: skip
    return rows


def test_the_fairness_headline_names_every_flagged_group_and_marks_the_bars_under_the_line() -> None:
    from tailor.sql import replace_run_rows
    from tailor.tasks.fairness import AUDIT_COLUMNS, ensure_audit_table

    settings, ctx = tiny.settings(), tiny.context()
    con = tiny.warehouse()
    ensure_audit_table(con)
    replace_run_rows(con, "meta.fairness_audit", AUDIT_COLUMNS,
                     audit_rows(ctx, [("18-24", 0.69), ("65+", 0.72)], [("55-64", 0.79)]), ctx.run_date)  # fmt: skip
    html = render(con, settings, ctx)
    headline = html.split('id="fairness"', 1)[1].split("</p>", 1)[0]
    assert "Flagged (2)" in headline
    assert "age_band=18-24 in campaign weekly" in headline and "age_band=65+ in campaign weekly" in headline
    assert "55-64" not in headline  # under the line but not significant: not flagged, but highlighted
    chart = fairness_section(con, settings, ctx)["chart"]
    assert "under 0.8, not significant" in chart and "flagged" in chart

    replace_run_rows(con, "meta.fairness_audit", AUDIT_COLUMNS, audit_rows(ctx, [], [("55-64", 0.79)]),
                     ctx.run_date)  # fmt: skip
    calm = render(con, settings, ctx).split('id="fairness"', 1)[1].split("</p>", 1)[0]
    assert "No group flagged" in calm and "1 ratio(s) are under 0.8 without being significant" in calm


def test_a_model_that_predicts_a_constant_or_loses_to_its_baseline_is_warned_about() -> None:
    import json

    from tailor.tasks.train import ensure_registry

    settings, ctx = tiny.settings(), tiny.context()
    con = tiny.warehouse()
    ensure_registry(con)
    constant = {"roc_auc": 0.5, "pr_auc": 0.125, "roc_curve": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]},
                "calibration_table": [{"mean_predicted": 0.125, "observed_rate": 0.125}]}  # fmt: skip
    learned = {"roc_auc": 0.71, "roc_curve": {"fpr": [0.0, 0.2, 1.0], "tpr": [0.0, 0.5, 1.0]},
               "calibration_table": [{"mean_predicted": 0.1, "observed_rate": 0.1},
                                     {"mean_predicted": 0.3, "observed_rate": 0.28}],
               "baselines": {"recency": {"roc_auc": 0.74}}}  # fmt: skip
    for name, metrics in (("conversion__weekly__a", constant), ("propensity", learned)):
        con.execute(
            "insert into meta.models (run_date, model_name, model_version, metrics, features, is_promoted, "
            "decision) values ($d, $n, 'v1', $m, ['recency_days'], true, 'promoted')",
            {"d": ctx.run_date, "n": name, "m": json.dumps(metrics)},
        )
    warnings = {m["name"]: m["warnings"] for m in models_section(con, ctx)["models"]}
    assert any("same score for everyone" in w for w in warnings["conversion__weekly__a"])
    assert warnings["propensity"] == ["does not beat recency (roc_auc 0.71 against 0.74)"]
    html = render(con, settings, ctx)
    assert html.count('class="warning"') == 2 and "It serves tonight anyway" in html
    assert "<details><summary>propensity v1: 1 features" in html  # the feature list is folded


def test_report_numbers_never_use_scientific_notation() -> None:
    import re

    from tailor.tasks.report import number, percent

    shown = [number(999.7), number(0.00004), number(2600.0), number(3e-7), number(1_234_567), percent(26.0)]
    # `.3g` and `.2e` wrote 1e+03 and 4.00e-05
    assert shown == ["1,000", "0.00004", "2,600", "0.0000003", "1,234,567", "+2,600.0%"]
    assert not any(re.search(r"\de[+-]\d", text) for text in shown)


def test_tiny_p_values_read_under_a_thousandth_in_the_experiment_and_fairness_sections() -> None:
    import re
    from datetime import date

    from tailor.sql import replace_run_rows
    from tailor.tasks.experiments import RESULT_COLUMNS, ensure_tables
    from tailor.tasks.fairness import AUDIT_COLUMNS, ensure_audit_table

    settings, ctx = tiny.settings(), tiny.context()
    con = tiny.warehouse()
    ensure_tables(con)
    base = {"run_date": ctx.run_date, "campaign_id": "weekly", "control_variant_id": "holdout",
            "window_start": date(2026, 2, 1), "srm_p_value": 3e-7, "is_trusted": False, "is_srm": True,
            "alpha": 0.00005, "correction": "holm", "metric": "conversion_rate", "units": 2600}  # fmt: skip
    replace_run_rows(con, "meta.experiment_results", RESULT_COLUMNS, [
        base | {"variant_id": "holdout", "is_control": True, "mean": 0.05},
        base | {"variant_id": "a", "is_control": False, "mean": 0.06, "control_mean": 0.05, "lift": 0.2,
                "lift_ci_low": 0.1, "lift_ci_high": 0.3, "p_value_adjusted": 3e-7, "is_significant": True,
                "verdict": "stop", "verdict_reason": "sample-ratio mismatch"},
    ], ctx.run_date)  # fmt: skip
    ensure_audit_table(con)
    replace_run_rows(con, "meta.fairness_audit", AUDIT_COLUMNS,
                     audit_rows(ctx, [("18-24", 0.69)], []), ctx.run_date)  # fmt: skip
    con.execute("update meta.fairness_audit set p_value_adjusted = 3e-7, value = 0.00004 where is_flagged")
    html = render(con, settings, ctx)
    experiments = html.split('id="experiments"', 1)[1].split('id="fairness"', 1)[0]
    assert "Sample-ratio mismatch (p &lt; 0.001)" in experiments  # was p = 3.00e-07
    assert "alpha 0.00005" in experiments  # str(float) wrote 5e-05
    assert "+20.0%</td><td>+10.0% to +30.0%</td><td>&lt; 0.001</td>" in experiments  # the p cell
    flagged = html.split('id="fairness"', 1)[1]
    assert "<td>0.00004</td>" in flagged and "<td>0.69</td><td>&lt; 0.001</td>" in flagged
    assert not re.search(r"\de[+-]\d", re.sub(r"<svg.*?</svg>|<style.*?</style>", "", html, flags=re.S))
