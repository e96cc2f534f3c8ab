"""`tailor draft-variants` against a local fake of an OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

# main() imports the shared error list, which pulls in Prefect (seconds); pay that at collection, not in a test
import tailor.errors  # noqa: F401
from tailor import drafts
from tailor.cli import main
from tailor.config import ConfigError, load_settings
from tailor.drafts import DraftError, check_candidates, draft_variants, parse_candidates

KEY_ENV = "TAILOR_TEST_LLM_KEY"
KEY = "sk-test-0123456789"
TIMEOUT = 0.5
CAMPAIGN_FILE = """\
# Test campaign: this header comment must survive drafting.
# A second comment line.
campaign_id: c1
channel: email
audience: {segments: [], consent_purpose: marketing_email}
holdout_share: 0.1
salt: "2026"
allocation: {policy: personalized, exploration_share: 0.1}
variants:
  - variant_id: base
    subject: "Hello from {{ user.country }}"
    headline: "Picked for you: {{ items[0].title if items else 'our bestsellers' }}"
    body: |
      <h1>Hi</h1>
      <p>{{ segment }}</p>
  - variant_id: draft-loyal-1
    status: draft
    written_for_segment: loyal
    drafted_by: earlier-model
    subject: "Thanks for staying with us"
"""


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    payload: dict[str, Any]


@dataclass
class FakeLLM:
    """What the endpoint answers (a queue whose last entry repeats, or a function of the request) and
    what it was asked."""

    port: int = 0
    replies: list[Reply] | Callable[[dict[str, Any]], Reply] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def next_reply(self, payload: dict[str, Any]) -> Reply:
        if callable(self.replies):
            return self.replies(payload)
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLLM

    def do_POST(self) -> None:
        payload = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.fake.requests.append(Recorded(self.path, dict(self.headers), payload))
        reply = self.fake.next_reply(payload)
        # waits on the event so teardown ends a slow answer at once instead of leaving a sleeping thread
        if reply.delay and self.fake.stopping.wait(reply.delay):
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def chat(candidates: Any) -> Reply:
    return content_reply(json.dumps({"candidates": candidates}))


def content_reply(content: str) -> Reply:
    answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
    return Reply(body=json.dumps(answer).encode())


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    fake = FakeLLM()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def minimal(port: int) -> dict[str, Any]:
    return {
        "project": "acme",
        "sources": {
            name: {"path": f"data/{name}/*.csv"} for name in ("users", "consents", "items", "interactions")
        },
        "publish": {"target": "file://out", "published_user_id": "external"},
        "drafting": {
            "base_url": f"http://127.0.0.1:{port}/v1",
            "model": "test-model",
            "api_key_env": KEY_ENV,
            "timeout_seconds": TIMEOUT,
            "candidates": 3,
        },
        "channel_limits": {"email": {"subject": 40, "headline": 60}},
    }


@pytest.fixture
def config(tmp_path: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, KEY)
    # a proxy set in the environment must not intercept the local fake
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "c1.yaml").write_text(CAMPAIGN_FILE)
    path = tmp_path / "tailor.yaml"
    path.write_text(yaml.safe_dump(minimal(llm.port)))
    return path


def campaign_file(config: Path) -> Path:
    return config.parent / "campaigns" / "c1.yaml"


def test_good_answer_appends_drafts_that_stay_unapproved(config: Path, llm: FakeLLM) -> None:
    llm.replies = [
        chat(
            [
                {"subject": "  Welcome back  ", "headline": "Deals picked in {{ user.country }}"},
                {"subject": "Your favourites are back", "headline": "Still thinking it over?"},
            ]
        ),
        chat([{"subject": "Hello and welcome", "headline": "Start with our bestsellers"}]),
    ]
    before = load_settings(config).campaigns[0]

    summary = draft_variants(config, "c1", "Autumn sale, 20% off", ["loyal", "new"])

    after = load_settings(config).campaigns[0]
    assert after.approved_variants == before.approved_variants
    assert len(after.variants) == len(before.variants) + 3
    added = after.variants[len(before.variants) :]
    # draft-loyal-1 already exists, so loyal numbering continues
    assert [v.variant_id for v in added] == ["draft-loyal-2", "draft-loyal-3", "draft-new-1"]
    assert {v.status for v in added} == {"draft"}
    assert {v.drafted_by for v in added} == {"test-model"}
    assert [v.written_for_segment for v in added] == ["loyal", "loyal", "new"]
    assert added[0].subject == "Welcome back"
    assert added[0].headline == "Deals picked in {{ user.country }}"
    assert summary.written == 3 and summary.rejected == []
    text = campaign_file(config).read_text()
    assert text.startswith("# Test campaign: this header comment must survive drafting.\n# A second comment")
    assert "body: |" in text  # multi-line copy stays readable for the person who approves drafts
    assert sorted(p.name for p in campaign_file(config).parent.iterdir()) == ["c1.yaml"]


def test_request_carries_key_model_limits_and_placeholders(config: Path, llm: FakeLLM) -> None:
    llm.replies = [chat([{"subject": "We kept your seat", "headline": "Come back for 20% off"}])]

    draft_variants(config, "c1", "Win back with 20% off", ["at_risk"])

    assert len(llm.requests) == 1
    request = llm.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    payload = request.payload
    assert payload["model"] == "test-model"
    assert payload["response_format"] == {"type": "json_object"}
    assert isinstance(payload["temperature"], float)
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]
    prompt = payload["messages"][1]["content"]
    for expected in (
        "Win back with 20% off",
        "at_risk",
        "exactly 3",
        "subject: at most 40 characters",
        "headline: at most 60 characters",
        "{{ user.country }}",
        "{{ items[0].title if items else 'our bestsellers' }}",
    ):
        assert expected in prompt, expected


def test_every_segment_by_default(config: Path, llm: FakeLLM) -> None:
    def per_segment(payload: dict[str, Any]) -> Reply:
        segment = re.search(r"Audience segment: (\w+)", payload["messages"][1]["content"]).group(1)
        return chat([{"subject": f"Just for {segment}", "headline": ""}])

    llm.replies = per_segment

    summary = draft_variants(config, "c1", "Spring news")

    assert [s.segment for s in summary.segments] == ["new", "loyal", "active", "at_risk", "lapsed"]
    ids = [v.variant_id for v in load_settings(config).campaigns[0].variants]
    assert ids[2:] == ["draft-new-1", "draft-loyal-2", "draft-active-1", "draft-at_risk-1", "draft-lapsed-1"]


def test_candidates_over_limit_duplicate_or_bad_template_are_rejected(config: Path, llm: FakeLLM) -> None:
    long_fixed = "x" * 41
    # 29 fixed characters, but 44 once the fallback title is filled in
    long_rendered = "A little something for you:  {{ items[0].title if items else 'our bestsellers' }}"
    llm.replies = [
        chat(
            [
                {"subject": "Fresh picks", "headline": "New this week"},
                {"subject": long_fixed, "headline": "ok"},
                {"subject": " Fresh picks ", "headline": "New this week "},
                {"subject": "Hi {{ user.email }}", "headline": "ok"},
                {"subject": long_rendered, "headline": "ok"},
                {"subject": "Thanks for staying with us"},
            ]
        )
    ]

    summary = draft_variants(config, "c1", "brief", ["active"])

    reasons = [r.reason for r in summary.rejected]
    assert len(reasons) == 5
    assert "41 characters" in reasons[0] and "allows 40" in reasons[0]
    assert reasons[1] == "duplicate"
    assert "user.email" in reasons[2]
    assert "rendered" in reasons[3]
    assert reasons[4] == "duplicate"  # same as the existing draft-loyal-1
    added = [v for v in load_settings(config).campaigns[0].variants if v.written_for_segment == "active"]
    assert [(v.variant_id, v.subject) for v in added] == [("draft-active-1", "Fresh picks")]


def test_more_candidates_than_asked_are_dropped() -> None:
    raw = [{"subject": f"Offer {n}", "headline": "h"} for n in range(3)]
    result = check_candidates(raw, "new", "email", {"subject": 40}, set(), wanted=2)
    assert [c.subject for c in result.accepted] == ["Offer 0", "Offer 1"]
    assert [r.reason for r in result.rejected] == ["more than the 2 candidates asked for"]


def test_the_segment_definition_in_the_prompt_has_plain_grouped_numbers() -> None:
    from tailor.config import RfmRule

    rule = RfmRule(name="x", max_days_since_purchase=1_000_000.0, max_days_since_activity=2.25,
                   min_purchases_90d=1200)  # fmt: skip
    described = drafts.describe_rule(rule)
    assert described == (
        "bought within the last 1,000,000 days, active within the last 2.25 days, at least 1,200 purchases in 90 days"
    )  # `:g` wrote 1e+06 and 1200
    assert not re.search(r"\de[+-]\d", described)


def test_no_accepted_candidate_leaves_the_file_untouched(config: Path, llm: FakeLLM) -> None:
    original = campaign_file(config).read_bytes()
    llm.replies = [chat([{"subject": "y" * 80, "headline": ""}])]

    summary = draft_variants(config, "c1", "brief", ["new"])

    assert summary.written == 0 and len(summary.rejected) == 1
    assert campaign_file(config).read_bytes() == original


def test_slow_answer_times_out(config: Path, llm: FakeLLM) -> None:
    original = campaign_file(config).read_bytes()
    llm.replies = [Reply(body=b"{}", delay=5)]
    started = time.monotonic()

    with pytest.raises(DraftError, match=r"timed out after 0\.5s"):
        draft_variants(config, "c1", "brief", ["new"])

    assert time.monotonic() - started < 2
    assert campaign_file(config).read_bytes() == original


def test_rate_limit_names_retry_after(config: Path, llm: FakeLLM) -> None:
    llm.replies = [Reply(status=429, body=b'{"error": "slow down"}', headers={"Retry-After": "7"})]

    with pytest.raises(DraftError, match="rate limit") as error:
        draft_variants(config, "c1", "brief", ["new"])

    assert "Retry-After: 7" in str(error.value)


def test_http_error_shows_status_and_short_excerpt_but_never_the_key(config: Path, llm: FakeLLM) -> None:
    body = f"internal error; you sent Authorization: Bearer {KEY} " + "x" * 2000
    llm.replies = [Reply(status=500, body=body.encode())]

    with pytest.raises(DraftError) as error:
        draft_variants(config, "c1", "brief", ["new"])

    message = str(error.value)
    assert "HTTP 500" in message and "internal error" in message
    assert KEY not in message and "***" in message
    assert len(message) < 400


@pytest.mark.parametrize(
    ("reply", "what"),
    [
        (Reply(body=b"<html>oops</html>"), "body is not JSON"),
        (Reply(body=b'{"object": "chat.completion"}'), "no choices"),
        (Reply(body=b'{"choices": [{"message": {"content": null}}]}'), "content is missing"),
        (content_reply("Sure! Here are some ideas"), "content is not JSON"),
        (content_reply('{"ideas": []}'), 'no "candidates" list'),
        (content_reply('{"candidates": "Fresh picks"}'), 'no "candidates" list'),
        (chat([{"headline": "no subject"}]), 'candidate 1 has no "subject"'),
        (chat([{"subject": "ok", "headline": "ok"}, {"subject": 5}]), 'candidate 2 has no "subject"'),
        (chat([{"subject": "ok", "headline": ["a"]}]), "not text"),
        (chat(["just a string"]), "candidate 1 is not an object"),
    ],
)
def test_malformed_answers_say_what_is_wrong(config: Path, llm: FakeLLM, reply: Reply, what: str) -> None:
    original = campaign_file(config).read_bytes()
    llm.replies = [reply]

    with pytest.raises(DraftError, match="malformed answer") as error:
        draft_variants(config, "c1", "brief", ["new"])

    assert what in str(error.value)
    assert campaign_file(config).read_bytes() == original


def test_json_in_a_code_fence_is_accepted() -> None:
    content = '```json\n{"candidates": [{"subject": "Hi", "headline": "There"}]}\n```'
    body = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
    assert parse_candidates(body, "http://x/v1/chat/completions") == [{"subject": "Hi", "headline": "There"}]


def test_missing_key_names_the_variable_and_sends_nothing(
    config: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(DraftError, match=KEY_ENV):
        draft_variants(config, "c1", "brief")
    assert llm.requests == []


def test_unknown_campaign_and_segment(config: Path, llm: FakeLLM) -> None:
    with pytest.raises(DraftError, match=r"unknown campaign 'nope'; the campaigns are c1"):
        draft_variants(config, "nope", "brief")
    with pytest.raises(DraftError, match=r"unknown segment\(s\) vip; the segments are new, loyal"):
        draft_variants(config, "c1", "brief", ["vip"])
    assert llm.requests == []


def test_inline_campaign_is_refused(config: Path, llm: FakeLLM) -> None:
    data = minimal(llm.port) | {
        "campaigns": [{"campaign_id": "inline1", "channel": "web", "variants": [{"variant_id": "a"}]}]
    }
    config.write_text(yaml.safe_dump(data))

    with pytest.raises(DraftError, match="own file under campaigns/"):
        draft_variants(config, "inline1", "brief")


def test_file_is_restored_when_the_config_no_longer_loads(
    config: Path, llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = campaign_file(config).read_bytes()
    llm.replies = [chat([{"subject": "Fresh picks", "headline": "New this week"}])]
    calls = []

    def load_then_refuse(path: Path) -> Any:
        calls.append(path)
        if len(calls) > 1:
            raise ConfigError(f"{path}: refused for the test")
        return load_settings(path)

    monkeypatch.setattr(drafts, "load_settings", load_then_refuse)

    with pytest.raises(DraftError, match="restored") as error:
        draft_variants(config, "c1", "brief", ["new"])

    assert "refused for the test" in str(error.value)
    assert len(calls) == 2
    assert campaign_file(config).read_bytes() == original


def test_cli_prints_what_was_written_and_rejected(config: Path, llm: FakeLLM, capsys) -> None:
    llm.replies = [chat([{"subject": "Fresh picks", "headline": "New"}, {"subject": "z" * 50}])]

    code = main(
        ["draft-variants", "--config", str(config), "--campaign", "c1", "--brief", "b", "--segments", "loyal"]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "loyal" in out and "1 written (draft-loyal-2), 1 rejected" in out
    assert "allows 40" in out and "approved" in out


def test_cli_draft_error_is_one_line_and_exit_2(config: Path, llm: FakeLLM, capsys) -> None:
    llm.replies = [Reply(status=429, headers={"Retry-After": "30"})]

    code = main(["draft-variants", "--config", str(config), "--campaign", "c1", "--brief", "b"])

    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.startswith("tailor: error: ") and captured.err.count("\n") == 1
    assert "rate limit" in captured.err and "Retry-After: 30" in captured.err
    assert KEY not in captured.err + captured.out


def test_cli_config_error_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    code = main(
        ["draft-variants", "--config", str(tmp_path / "missing.yaml"), "--campaign", "c1", "--brief", "b"]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tailor: error: ") and err.count("\n") == 1 and "missing.yaml" in err


def test_cli_rejects_an_empty_segment_list(capsys) -> None:
    with pytest.raises(SystemExit):
        main(
            ["draft-variants", "--config", "c.yaml", "--campaign", "c1", "--brief", "b", "--segments", " , "]
        )
    assert "names no segment" in capsys.readouterr().err
