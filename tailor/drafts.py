"""Draft copy from a language model: `tailor draft-variants` writes proposals into a campaign file.

The model only ever proposes. Every candidate lands as a variant with `status: draft`, which the
allocation never sends (CampaignConfig.approved_variants); a person reads it and sets `status: approved`.
Candidates must pass the same template and length checks as hand-written copy, and the campaign file must
still load afterwards, or it is put back as it was.

The endpoint is any OpenAI-compatible chat-completions API. HTTP goes through urllib so the feature adds
no dependency; the key comes from the environment variable named by `drafting.api_key_env`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tailor import human
from tailor.config import CampaignConfig, ConfigError, DraftingConfig, RfmRule, Settings, load_settings
from tailor.templates import compile_template, sample_context, template_problem

DRAFTED_FIELDS = ("subject", "headline")
PLACEHOLDERS = ("{{ user.country }}", "{{ items[0].title if items else 'our bestsellers' }}")
# some variety between candidates is the point; the checks below catch what goes astray
TEMPERATURE = 0.8
ERROR_EXCERPT_CHARS = 200


class DraftError(RuntimeError):
    """Drafting failed (endpoint, answer or campaign file); the message says what to fix."""


@dataclass(frozen=True)
class Candidate:
    subject: str
    headline: str


@dataclass(frozen=True)
class Rejection:
    segment: str
    subject: str
    reason: str


@dataclass
class SegmentDrafts:
    segment: str
    accepted: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    variant_ids: list[str] = field(default_factory=list)


@dataclass
class DraftSummary:
    campaign_id: str
    campaign_file: str
    model: str
    segments: list[SegmentDrafts]

    @property
    def written(self) -> int:
        return sum(len(drafts.variant_ids) for drafts in self.segments)

    @property
    def rejected(self) -> list[Rejection]:
        return [rejection for drafts in self.segments for rejection in drafts.rejected]


def draft_variants(
    config_path: str | Path, campaign_id: str, brief: str, segments: Sequence[str] | None = None
) -> DraftSummary:
    """Ask the endpoint for copy per segment, check it, and append what passes to the campaign file."""
    settings = load_settings(config_path)
    campaign = find_campaign(settings, campaign_id)
    chosen = resolve_segments(settings, segments)
    key = api_key(settings.drafting)
    limits = settings.channel_limits.get(campaign.channel, {})
    known = {(variant.subject, variant.headline) for variant in campaign.variants}
    results = []
    # every request happens before anything is written: a failure halfway leaves the file untouched
    for segment in chosen:
        messages = build_messages(campaign, limits, brief, segment, settings)
        raw = request_candidates(settings.drafting, key, messages)
        results.append(
            check_candidates(raw, segment, campaign.channel, limits, known, settings.drafting.candidates)
        )
    summary = DraftSummary(campaign.campaign_id, campaign.source_file, settings.drafting.model, results)
    if summary_has_drafts(summary):
        assign_variant_ids(results, [variant.variant_id for variant in campaign.variants])
        campaign_file = Path(campaign.source_file)
        original = write_drafts(campaign_file, draft_entries(results, settings.drafting.model))
        confirm_loads(config_path, campaign_file, original)
    return summary


def summary_has_drafts(summary: DraftSummary) -> bool:
    return any(drafts.accepted for drafts in summary.segments)


def find_campaign(settings: Settings, campaign_id: str) -> CampaignConfig:
    for campaign in settings.campaigns:
        if campaign.campaign_id == campaign_id:
            if not campaign.source_file:
                raise DraftError(
                    f"campaign {campaign_id!r} is defined inline in {settings.config_path}; drafts need the "
                    "campaign in its own file under campaigns/ (move it to campaigns/<id>.yaml)"
                )
            return campaign
    known = ", ".join(sorted(c.campaign_id for c in settings.campaigns)) or "(none)"
    raise DraftError(f"unknown campaign {campaign_id!r}; the campaigns are {known}")


def resolve_segments(settings: Settings, requested: Sequence[str] | None) -> list[str]:
    names = [rule.name for rule in settings.segments.rfm_rules]
    if not requested:
        return names
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise DraftError(f"unknown segment(s) {', '.join(unknown)}; the segments are {', '.join(names)}")
    return list(dict.fromkeys(requested))


def api_key(drafting: DraftingConfig) -> str:
    key = os.environ.get(drafting.api_key_env, "").strip()
    if not key:
        raise DraftError(
            f"the environment variable {drafting.api_key_env} (the drafting API key, "
            "key 'drafting.api_key_env') is not set"
        )
    return key


def describe_rule(rule: RfmRule) -> str:
    """The segment's definition in words, so the model knows whom it writes for."""
    conditions = [
        (rule.max_days_since_signup, "signed up within {} days"),
        (rule.max_days_since_purchase, "bought within the last {} days"),
        (rule.min_days_since_purchase, "last bought more than {} days ago"),
        (rule.max_days_since_activity, "active within the last {} days"),
        (rule.min_purchases_90d, "at least {} purchases in 90 days"),
    ]
    # as configured, in plain grouped digits (`:g` wrote a million days as 1e+06)
    stated = [text.format(human.setting(value)) for value, text in conditions if value is not None]
    return ", ".join(stated) or "everyone not in an earlier segment"


def build_messages(
    campaign: CampaignConfig, limits: Mapping[str, int], brief: str, segment: str, settings: Settings
) -> list[dict[str, str]]:
    n = settings.drafting.candidates
    rule = next(rule for rule in settings.segments.rfm_rules if rule.name == segment)
    limit_text = "; ".join(
        f"{name}: at most {limits[name]} characters" if name in limits else f"{name}: no fixed limit"
        for name in DRAFTED_FIELDS
    )
    system = (
        "You write marketing copy for a retailer. Answer with one JSON object and nothing else, of the form "
        '{"candidates": [{"subject": "...", "headline": "..."}, ...]}.'
    )
    user = "\n".join(
        [
            f"Write exactly {n} different candidates for a {campaign.channel} campaign ({campaign.campaign_id}).",
            f"Brief: {brief}",
            f"Audience segment: {segment} ({describe_rule(rule)}).",
            f"Character limits, counted after the placeholders are filled in: {limit_text}.",
            "Plain text only. The copy may use these placeholders and no others: "
            + " and ".join(PLACEHOLDERS),
            f'Answer as {{"candidates": [...]}} with exactly {n} objects, each with "subject" and "headline".',
        ]
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def request_candidates(
    drafting: DraftingConfig, key: str, messages: list[dict[str, str]]
) -> list[dict[str, Any]]:
    payload = {
        "model": drafting.model,
        "messages": messages,
        "temperature": TEMPERATURE,
        "response_format": {"type": "json_object"},
    }
    url = drafting.base_url.rstrip("/") + "/chat/completions"
    try:
        body = post_json(url, payload, key, drafting.timeout_seconds)
    except DraftError as error:
        # an endpoint may echo the request back in an error body; the key must not reach a terminal or log
        raise DraftError(str(error).replace(key, "***")) from None
    return parse_candidates(body, url)


def post_json(url: str, payload: dict[str, Any], key: str, timeout: float) -> bytes:
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        raise http_error(url, error) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise timed_out(url, timeout) from None
        raise DraftError(f"cannot reach the drafting endpoint {url}: {error.reason}") from None
    except TimeoutError:
        raise timed_out(url, timeout) from None


def timed_out(url: str, timeout: float) -> DraftError:
    return DraftError(
        f"the drafting endpoint {url} timed out after {timeout:g}s (raise drafting.timeout_seconds if it is "
        "just slow)"
    )


def http_error(url: str, error: urllib.error.HTTPError) -> DraftError:
    if error.code == 429:
        retry_after = error.headers.get("Retry-After") if error.headers else None
        wait = f"; Retry-After: {retry_after}" if retry_after else ""
        return DraftError(
            f"the drafting endpoint {url} refused the request: rate limit reached (HTTP 429){wait}"
        )
    try:
        text = error.read().decode("utf-8", "replace")
    except OSError:
        text = ""
    excerpt = " ".join(text.split())[:ERROR_EXCERPT_CHARS]
    return DraftError(f"the drafting endpoint {url} answered HTTP {error.code}: {excerpt or error.reason}")


def parse_candidates(body: bytes, url: str) -> list[dict[str, Any]]:
    """The candidate objects from a chat-completions answer, or a DraftError naming what is malformed."""

    def malformed(what: str) -> DraftError:
        return DraftError(f"malformed answer from {url}: {what}")

    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise malformed(f"the body is not JSON ({excerpt(body)})") from None
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise malformed("no choices")
    message = choices[0].get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise malformed("choices[0].message.content is missing or not text")
    try:
        data = json.loads(strip_code_fence(content))
    except ValueError:
        raise malformed(f"the message content is not JSON ({excerpt(content.encode())})") from None
    candidates = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(candidates, list):
        raise malformed('the content has no "candidates" list')
    for number, candidate in enumerate(candidates, 1):
        problem = candidate_shape_problem(candidate)
        if problem:
            raise malformed(f"candidate {number} {problem}")
    return candidates


def candidate_shape_problem(candidate: Any) -> str | None:
    if not isinstance(candidate, dict):
        return "is not an object"
    if not isinstance(candidate.get("subject"), str):
        return 'has no "subject" text'
    if not isinstance(candidate.get("headline", ""), str):
        return 'has a "headline" that is not text'
    return None


def strip_code_fence(content: str) -> str:
    # some models wrap JSON in a Markdown fence even in JSON mode
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", content, flags=re.DOTALL)
    return match.group(1) if match else content


def excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return repr(text[:80]) if text else "empty"


def check_candidates(
    raw: list[dict[str, Any]],
    segment: str,
    channel: str,
    limits: Mapping[str, int],
    known: set[tuple[str, str]],
    wanted: int,
) -> SegmentDrafts:
    """Keep the candidates that pass; `known` holds copy already in the campaign and grows as we accept."""
    drafts = SegmentDrafts(segment)
    for item in raw:
        candidate = Candidate(item["subject"].strip(), item.get("headline", "").strip())
        reason = candidate_problem(candidate, channel, limits, known)
        if reason is None and len(drafts.accepted) >= wanted:
            reason = f"more than the {wanted} candidates asked for"
        if reason:
            drafts.rejected.append(Rejection(segment, candidate.subject, reason))
            continue
        known.add((candidate.subject, candidate.headline))
        drafts.accepted.append(candidate)
    return drafts


def candidate_problem(
    candidate: Candidate, channel: str, limits: Mapping[str, int], known: set[tuple[str, str]]
) -> str | None:
    if not candidate.subject:
        return "empty subject"
    if (candidate.subject, candidate.headline) in known:
        return "duplicate"
    for name in DRAFTED_FIELDS:
        problem = field_problem(getattr(candidate, name), channel, name, limits.get(name))
        if problem:
            return f"{name}: {problem}"
    return None


def field_problem(text: str, channel: str, name: str, limit: int | None) -> str | None:
    """The config's own template check, plus the rendered length: placeholders make copy longer."""
    problem = template_problem(text, channel, name, limit)
    if problem or limit is None:
        return problem
    template = compile_template(text, channel, name)
    longest = max(len(template.render(sample_context(channel, with_items))) for with_items in (True, False))
    if longest > limit:
        return f"{longest} characters when rendered for a sample user; the channel allows {limit}"
    return None


def assign_variant_ids(results: list[SegmentDrafts], existing: list[str]) -> None:
    taken = set(existing)
    for drafts in results:
        number = 1
        for _ in drafts.accepted:
            while f"draft-{drafts.segment}-{number}" in taken:
                number += 1
            variant_id = f"draft-{drafts.segment}-{number}"
            taken.add(variant_id)
            drafts.variant_ids.append(variant_id)


def draft_entries(results: list[SegmentDrafts], model: str) -> list[dict[str, str]]:
    return [
        {
            "variant_id": variant_id,
            "status": "draft",
            "written_for_segment": drafts.segment,
            "drafted_by": model,
            "subject": candidate.subject,
            "headline": candidate.headline,
        }
        for drafts in results
        for variant_id, candidate in zip(drafts.variant_ids, drafts.accepted, strict=True)
    ]


class _BlockDumper(yaml.SafeDumper):
    """Safe dumping, with multi-line text (email bodies) kept as readable `|` blocks for the reviewer."""


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_text)


def leading_comments(text: str) -> str:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return "".join(lines)


def write_drafts(path: Path, entries: list[dict[str, str]]) -> bytes:
    """Append the entries to the file's variants; returns the file's previous bytes for a restore."""
    original = path.read_bytes()
    text = original.decode("utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        raise DraftError(f"{path}: a campaign file needs a mapping with a 'variants' list")
    data["variants"].extend(entries)
    dumped = yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)
    atomic_write(path, (leading_comments(text) + dumped).encode("utf-8"))
    return original


def atomic_write(path: Path, content: bytes) -> None:
    """Readers see the old file or the new one, never half of it. The temporary name is hidden and
    not *.yaml, so a concurrent config load does not pick it up as a campaign."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def confirm_loads(config_path: str | Path, campaign_file: Path, original: bytes) -> None:
    """The whole config must still load with the drafts in; otherwise the campaign file is put back."""
    try:
        load_settings(config_path)
    except ConfigError as error:
        atomic_write(campaign_file, original)
        raise DraftError(
            f"{campaign_file}: the config no longer loads with the drafts added, so the file was restored "
            f"as it was: {error}"
        ) from None


def format_drafts(summary: DraftSummary) -> str:
    """What the CLI prints: per segment what was written and why anything was dropped."""
    lines = [f"campaign {summary.campaign_id}, drafts by {summary.model}:"]
    for drafts in summary.segments:
        written = f" ({', '.join(drafts.variant_ids)})" if drafts.variant_ids else ""
        lines.append(
            f"  {drafts.segment:<10} {len(drafts.variant_ids)} written{written}, {len(drafts.rejected)} rejected"
        )
        lines.extend(f"    rejected {r.subject[:60]!r}: {r.reason}" for r in drafts.rejected)
    if summary.written:
        lines.append(
            f"wrote {summary.written} draft variant(s) to {summary.campaign_file}; none is sent until a person "
            "sets its status to approved"
        )
    else:
        lines.append(f"no candidate passed the checks; {summary.campaign_file} is unchanged")
    return "\n".join(lines)
