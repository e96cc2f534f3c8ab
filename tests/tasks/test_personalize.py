"""Personalize's shapes and scores without a trained company: the SQL on a handful of rows, the line shapes,
and pseudonyms inside lists."""

from __future__ import annotations

import math
from datetime import date

import duckdb
import jsonschema
import polars as pl
import pytest

from tailor.sql import query
from tailor.tasks.personalize import LINE_SHAPES
from tailor.tasks.publish import pseudonym, pseudonymize
from tests.personalize_shapes import BATCH_INFERENCE_LINE, BATCH_SEGMENT_LINE, check_scores, validate

RUN_DATE = date(2026, 12, 1)


def recommendations(rows: list[tuple[str, int, float, bool]]) -> duckdb.DuckDBPyConnection:
    """A warehouse holding only marts.recommendations: (user_id, rank, score, is_personalized) rows."""
    con = duckdb.connect()
    con.execute("create schema marts")
    frame = pl.DataFrame(
        [(user, rank, f"i{rank}", score, personalized, "email") for user, rank, score, personalized in rows],
        schema=["user_id", "rank", "item_id", "score", "is_personalized", "channels"],
        orient="row",
    )
    con.register("recommendation_rows", frame.to_arrow())
    con.execute("create table marts.recommendations as select * from recommendation_rows")
    return con


def batch(con: duckdb.DuckDBPyConnection) -> dict[str, list[float]]:
    frame = query(con, "marts/personalize_batch", {"run_date": RUN_DATE}).pl()
    return dict(zip(frame["user_id"], frame["scores"].to_list(), strict=True))


def test_scores_are_a_softmax_over_each_users_list_on_one_scale_for_every_kind_of_list() -> None:
    ranker = [1.56, 0.4, -0.2, -1.43]  # a LambdaRank model's raw scores: any sign
    popularity = [1.0, 0.5, 0.25, 0.25]  # the fallback's popularity relative to the most popular
    con = recommendations(
        [("ranked", r + 1, s, True) for r, s in enumerate(ranker)]
        + [("fallback", r + 1, s, False) for r, s in enumerate(popularity)]
        # a short personalized list filled from the fallback, whose popularity tops the ranker's scores
        + [("mixed", 1, -0.5, True), ("mixed", 2, -1.0, True), ("mixed", 3, 1.0, False), ("mixed", 4, 0.5, False)]
        # a buy-again baseline: bought items near 1e9, the others at minus their popularity rank
        + [("baseline", 1, 1e9 + 2, True), ("baseline", 2, 1e9 + 1, True), ("baseline", 3, -3.0, True)]
    )  # fmt: skip
    scores = batch(con)
    lines = [
        {"output": {"scores": s, "recommendedItems": [str(i) for i in range(len(s))]}}
        for s in scores.values()
    ]
    tops = check_scores(lines)
    assert all(math.isclose(sum(s), 1.0, rel_tol=1e-12) for s in scores.values())
    assert all(top >= 1 / 4 for top in tops)

    softmax = [math.exp(s) / sum(math.exp(t) for t in ranker) for s in ranker]
    assert scores["ranked"] == pytest.approx(softmax, rel=1e-12)
    # the fallback's scores are each item's share of the list's popularity
    assert scores["fallback"] == pytest.approx([0.5, 0.25, 0.125, 0.125], rel=1e-12)
    # fallback fill is capped at the ranker's weakest pick: it never outranks the ranker's items
    weights = [math.exp(0), math.exp(-0.5), math.exp(-0.5), math.exp(-0.5)]
    assert scores["mixed"] == pytest.approx([w / sum(weights) for w in weights], rel=1e-12)
    # scores 1e9 apart stay positive: the gap is capped at 20
    assert scores["baseline"][2] == pytest.approx(math.exp(-20) / (1 + math.exp(-1) + math.exp(-20)))


def test_scores_are_the_same_bits_whatever_the_row_order() -> None:
    rows = [(f"u{u}", r + 1, 1.0 / (r + 1) + u / 7, True) for u in range(50) for r in range(10)]
    first = batch(recommendations(rows))
    again = batch(recommendations(list(reversed(rows))))
    assert first == again


def test_lines_have_the_documented_shapes() -> None:
    batch_row = {"user_id": "u1", "recommended_items": ["i7", "i3"], "scores": [0.6, 0.4],
                 "is_personalized": True, "channels": "email", "run_date": RUN_DATE}  # fmt: skip
    line = LINE_SHAPES["personalize_batch"](batch_row)
    validate(line, BATCH_INFERENCE_LINE)
    assert line == {"input": {"userId": "u1"}, "output": {"recommendedItems": ["i7", "i3"],
                    "scores": [0.6, 0.4]}, "error": None}  # fmt: skip

    item = {"audience_type": "item", "audience_id": "i42", "item_attributes": None,
            "recommended_users": ["u9", "u2"], "model_version": "v1", "run_date": RUN_DATE}  # fmt: skip
    category = item | {"audience_type": "category", "audience_id": "books",
                       "item_attributes": 'ITEMS.category = "books"'}  # fmt: skip
    for row in (item, category):
        validate(LINE_SHAPES["personalize_segments"](row), BATCH_SEGMENT_LINE)
    assert LINE_SHAPES["personalize_segments"](item) == {
        "input": {"itemId": "i42"},
        "output": {"recommendedUsers": ["u9", "u2"]},
    }
    assert LINE_SHAPES["personalize_segments"](category) == {
        "itemAttributes": 'ITEMS.category = "books"',
        "output": {"recommendedUsers": ["u9", "u2"]},
    }
    # the schemas are closed: the old line without `error`, or a score of 0, does not pass
    with pytest.raises(jsonschema.ValidationError):
        validate({"input": {"userId": "u1"}, "output": line["output"]}, BATCH_INFERENCE_LINE)
    with pytest.raises(jsonschema.ValidationError):
        validate(line | {"output": {"recommendedItems": ["i7"], "scores": [0.0]}}, BATCH_INFERENCE_LINE)


def test_segment_queries_escape_quotes_and_backslashes() -> None:
    con = duckdb.connect()
    con.execute("create schema marts")
    con.execute(
        """create table marts.item_audiences as select * from (values
            ('category', 'say "hi"\\', 2, 'u2', 'v1'), ('category', 'say "hi"\\', 1, 'u1', 'v1'),
            ('item', 'i1', 1, 'u3', 'v1')
        ) as t(audience_type, audience_id, rank, user_id, model_version)"""
    )
    rows = query(con, "marts/personalize_segments", {"run_date": RUN_DATE}).pl().sort("audience_type")
    assert rows["item_attributes"].to_list() == ['ITEMS.category = "say \\"hi\\"\\\\"', None]
    assert rows["recommended_users"].to_list() == [["u1", "u2"], ["u3"]]


def test_ids_inside_lists_are_pseudonymised_like_user_id() -> None:
    frame = pl.DataFrame({"user_id": ["u1", "u2"], "recommended_users": [["u2", "u1", "u3"], []]})
    hashed = pseudonymize(frame, b"k", None, ("recommended_users",))
    assert hashed["user_id"].to_list() == [pseudonym(b"k", "u1"), pseudonym(b"k", "u2")]
    # the same id gets the same pseudonym in a list as in user_id, and the list keeps its order
    assert hashed["recommended_users"].to_list() == [[pseudonym(b"k", u) for u in ("u2", "u1", "u3")], []]
    lists_only = pseudonymize(frame.drop("user_id"), b"k", None, ("recommended_users",))
    assert lists_only["recommended_users"].equals(hashed["recommended_users"])
    assert pseudonymize(frame, None, None, ("recommended_users",)).equals(frame)


def test_the_documented_examples_have_the_shapes_the_tests_check() -> None:
    """docs/outputs.md shows each Personalize line; the schemas the published lines are held to accept them."""
    import json
    import re

    from tests.conftest import REPO

    docs = (REPO / "docs" / "outputs.md").read_text()
    schemas = {"personalize_batch": BATCH_INFERENCE_LINE, "personalize_segments": BATCH_SEGMENT_LINE}
    for name, schema in schemas.items():
        section = docs.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        examples = re.findall(r"```json\n(.*?)```", section, re.S)
        assert examples, name
        for example in examples:
            validate(json.loads(example), schema)
