"""JSON Schemas of the Amazon Personalize output lines Tailor publishes, written from AWS's documentation:

- batch inference job, USER_PERSONALIZATION recipes:
  https://docs.aws.amazon.com/personalize/latest/dg/batch-inference-job-output-examples.html
- batch segment job, Item-Affinity and Item-Attribute-Affinity recipes:
  https://docs.aws.amazon.com/personalize/latest/dg/batch-segment-job-output-examples.html

Closed (`additionalProperties: false`), so a key Personalize does not write fails as surely as a missing one.
"""

from __future__ import annotations

import itertools
from typing import Any

import jsonschema

_IDS = {"type": "array", "items": {"type": "string", "minLength": 1}}

BATCH_INFERENCE_LINE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Personalize batch inference output line (USER_PERSONALIZATION)",
    "type": "object",
    "required": ["input", "output", "error"],
    "additionalProperties": False,
    "properties": {
        "input": {
            "type": "object",
            "required": ["userId"],
            "additionalProperties": False,
            "properties": {"userId": {"type": "string", "minLength": 1}},
        },
        "output": {
            "type": "object",
            "required": ["recommendedItems", "scores"],
            "additionalProperties": False,
            "properties": {
                "recommendedItems": _IDS | {"minItems": 1, "uniqueItems": True},
                # Personalize's scores: relative certainty on a scale from 0 to 1; ours are never 0
                "scores": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                },
            },
        },
        "error": {"type": "null"},
    },
}

_SEGMENT_OUTPUT = {
    "type": "object",
    "required": ["recommendedUsers"],
    "additionalProperties": False,
    "properties": {"recommendedUsers": _IDS | {"minItems": 1, "uniqueItems": True}},
}

BATCH_SEGMENT_LINE: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Personalize batch segment output line (Item-Affinity or Item-Attribute-Affinity)",
    "oneOf": [
        {
            "type": "object",
            "required": ["input", "output"],
            "additionalProperties": False,
            "properties": {
                "input": {
                    "type": "object",
                    "required": ["itemId"],
                    "additionalProperties": False,
                    "properties": {"itemId": {"type": "string", "minLength": 1}},
                },
                "output": _SEGMENT_OUTPUT,
            },
        },
        {
            "type": "object",
            "required": ["itemAttributes", "output"],
            "additionalProperties": False,
            "properties": {
                "itemAttributes": {"type": "string", "pattern": r'^ITEMS\.[A-Za-z_][A-Za-z0-9_]* = ".*"$'},
                "output": _SEGMENT_OUTPUT,
            },
        },
    ],
}


def validate(line: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(line)


def check_scores(lines: list[dict[str, Any]]) -> list[float]:
    """Personalize's sense of a user's scores, line by line: one per item, positive, non-increasing with
    rank, summing to at most 1 (float rounding aside). The users' top scores."""
    tops = []
    for line in lines:
        scores = line["output"]["scores"]
        assert len(scores) == len(line["output"]["recommendedItems"]), line
        assert all(0 < score <= 1 for score in scores), line
        assert all(a >= b for a, b in itertools.pairwise(scores)), line
        assert sum(scores) <= 1 + 1e-9, line
        tops.append(scores[0])
    return tops
