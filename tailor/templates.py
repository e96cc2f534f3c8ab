"""Campaign templates: what they may see, how they are checked when the config loads, how they render.

A template sees exactly this context, nothing else (so a message can never leak an email address or a
sensitive attribute):
    user      country, language
    segment   the user's RFM segment name (new, active, loyal, at_risk, lapsed) or "unknown"
    items     the user's top recommended items, each: item_id, title, category, price_cents, reason
    campaign  id, channel

Templates render in Jinja2's sandbox with strict undefined variables. Email bodies are HTML and get
autoescaping; every other field is plain text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, nodes
from jinja2.sandbox import SandboxedEnvironment

TEMPLATE_FIELDS = ("subject", "headline", "body", "call_to_action")
CONTEXT_FIELDS: dict[str, tuple[str, ...]] = {
    "user": ("country", "language"),
    "campaign": ("id", "channel"),
}
ITEM_FIELDS = ("item_id", "title", "category", "price_cents", "reason")
ROOT_NAMES = ("user", "segment", "items", "campaign")
SEGMENT_NAMES_UNKNOWN = "unknown"
ELLIPSIS = "…"

_plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_html = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


def is_html(channel: str, field: str) -> bool:
    return channel == "email" and field == "body"


def compile_template(source: str, channel: str, field: str) -> Template:
    return (_html if is_html(channel, field) else _plain).from_string(source)


def sample_context(channel: str, with_items: bool) -> dict[str, Any]:
    item = {
        "item_id": "i0001",
        "title": "Sample title",
        "category": "books",
        "price_cents": 1999,
        "reason": "Popular right now",
    }
    return {
        "user": {"country": "DE", "language": "de"},
        "segment": "active",
        "items": [item, item | {"item_id": "i0002"}, item | {"item_id": "i0003"}] if with_items else [],
        "campaign": {"id": "sample", "channel": channel},
    }


def _loop_names(tree: nodes.Node) -> set[str]:
    """Names bound by `{% for x in items %}`: their attributes must be item fields."""
    names = set()
    for loop in tree.find_all(nodes.For):
        if (
            isinstance(loop.iter, nodes.Name)
            and loop.iter.name == "items"
            and isinstance(loop.target, nodes.Name)
        ):
            names.add(loop.target.name)
    return names


def _unknown_fields(tree: nodes.Node) -> Iterator[str]:
    declared = {node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")}
    # Jinja's own names: `loop` inside a for, and globals such as range, namespace, cycler
    builtin = {"loop", *_plain.globals}
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name not in {*ROOT_NAMES, *declared, *builtin}:
            yield name.name
    item_names = _loop_names(tree)
    for access in tree.find_all(nodes.Getattr):
        base = access.node
        if isinstance(base, nodes.Name) and base.name in CONTEXT_FIELDS:
            if access.attr not in CONTEXT_FIELDS[base.name]:
                yield f"{base.name}.{access.attr}"
        elif isinstance(base, nodes.Name) and base.name in item_names:
            if access.attr not in ITEM_FIELDS:
                yield f"item.{access.attr}"
        elif (
            isinstance(base, nodes.Getitem)
            and isinstance(base.node, nodes.Name)
            and base.node.name == "items"
            and access.attr not in ITEM_FIELDS
        ):
            yield f"items[].{access.attr}"


def template_problem(source: str, channel: str, field: str, limit: int | None) -> str | None:
    """Why this template cannot be used, or None: syntax, unknown fields, a failure for a user without
    recommended items, or fixed text already longer than the channel allows."""
    environment = _html if is_html(channel, field) else _plain
    try:
        tree = environment.parse(source)
    except TemplateError as error:
        return f"syntax error: {error}"
    unknown = sorted(set(_unknown_fields(tree)))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; templates may use {describe_context()}"
    template = environment.from_string(source)
    for with_items in (True, False):
        try:
            template.render(sample_context(channel, with_items))
        except TemplateError as error:
            who = "a user with" if with_items else "a user without"
            return f"fails for {who} recommended items: {error}"
        except (TypeError, ValueError, LookupError) as error:
            return f"fails on sample values: {error}"
    fixed_text = "".join(node.data for node in tree.find_all(nodes.TemplateData))
    if limit is not None and len(fixed_text) > limit:
        return f"its fixed text alone is {len(fixed_text)} characters; the channel allows {limit}"
    return None


def describe_context() -> str:
    parts = [f"{root}.{{{','.join(fields)}}}" for root, fields in CONTEXT_FIELDS.items()]
    return ", ".join([*parts, "segment", f"items[].{{{','.join(ITEM_FIELDS)}}}"])


def fit_to_limit(text: str, limit: int | None) -> tuple[str, bool]:
    """The text, cut at a word boundary with an ellipsis when longer than the limit; and whether it was cut."""
    if limit is None or len(text) <= limit:
        return text, False
    cut = text[: limit - len(ELLIPSIS)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-") + ELLIPSIS, True
