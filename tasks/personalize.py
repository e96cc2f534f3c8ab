"""The JSON lines Amazon Personalize's batch jobs write, so a consumer built for Personalize's output reads
ours unchanged. The shapes are the documented ones (docs/outputs.md cites them):

- batch inference job, USER_PERSONALIZATION recipes
  (https://docs.aws.amazon.com/personalize/latest/dg/batch-inference-job-output-examples.html):
  {"input": {"userId": ...}, "output": {"recommendedItems": [...], "scores": [...]}, "error": null}
- batch segment job, Item-Affinity recipe
  (https://docs.aws.amazon.com/personalize/latest/dg/batch-segment-job-output-examples.html):
  {"input": {"itemId": ...}, "output": {"recommendedUsers": [...]}}
- batch segment job, Item-Attribute-Affinity recipe (same page):
  {"itemAttributes": "ITEMS.category = \"books\"", "output": {"recommendedUsers": [...]}}

The segment examples carry no "error" key, unlike the inference ones, so ours carry none either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = dict[str, Any]


def batch_inference_line(row: Row) -> Row:
    """A `personalize_batch` row as a batch inference output line; `error` is null as on every line a
    job could score."""
    return {
        "input": {"userId": row["user_id"]},
        "output": {"recommendedItems": row["recommended_items"], "scores": row["scores"]},
        "error": None,
    }


def batch_segment_line(row: Row) -> Row:
    """A `personalize_segments` row as a batch segment output line: an item's audience as Item-Affinity
    gives it, a category's as Item-Attribute-Affinity does (the query in `itemAttributes`)."""
    output = {"recommendedUsers": row["recommended_users"]}
    if row["audience_type"] == "item":
        return {"input": {"itemId": row["audience_id"]}, "output": output}
    return {"itemAttributes": row["item_attributes"], "output": output}


# dataset -> its JSON line; the Parquet files keep the warehouse's columns
LINE_SHAPES: dict[str, Callable[[Row], Row]] = {
    "personalize_batch": batch_inference_line,
    "personalize_segments": batch_segment_line,
}
