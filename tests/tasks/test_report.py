from __future__ import annotations

from datetime import datetime

from tailor.tasks.features import build_staging_models
from tailor.tasks.report import exclusions_section, fairness_section
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
    html = exclusions_section(con, settings)
    assert "3 of 4 catalogue items excluded" in html
    rows = {
        cells[0]: cells[1:]
        for cells in (
            [cell.split(">", 1)[1] for cell in row.split("</td>")[:-1]] for row in html.split("<tr>")[2:]
        )
    }
    assert rows == {
        "categories": ["fuel", "2"],
        "item_id_patterns": ["GIFT%", "1"],
        "max_price_cents": ["price above 10,000 cents", "0"],
        "exclude_unavailable": ["marked unavailable", "0"],
    }


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
    html = fairness_section(con, settings, ctx)
    assert "never flagged: gender: 1,234 users" in html
    assert "gender=unknown" not in html  # not among the lowest ratios of the compared groups
    assert "gender=m" in html
