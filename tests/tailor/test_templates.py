from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from tailor import templates
from tailor.config import ConfigError, load_settings
from tailor.templates import (
    TemplateLimitError,
    compile_template,
    fit_to_limit,
    is_html,
    sample_context,
    template_problem,
)
from tests.tailor.test_config import campaign_file, email_campaign, minimal, write


def test_email_bodies_are_html_escaped_and_subjects_are_not() -> None:
    context = sample_context("email", with_items=True)
    context["items"][0]["title"] = "<b>Tom & Jerry</b>"
    body = compile_template("<p>{{ items[0].title }}</p>", "email", "body").render(context)
    subject = compile_template("{{ items[0].title }}", "email", "subject").render(context)
    assert body == "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"
    assert subject == "<b>Tom & Jerry</b>"
    assert compile_template("{{ items[0].title }}", "push", "body").render(context) == "<b>Tom & Jerry</b>"


def test_known_fields_pass_and_loop_variables_are_checked() -> None:
    ok = "{% for item in items %}{{ item.title }} {{ item.reason }}{% endfor %} {{ segment }} {{ campaign.id }}"
    assert template_problem(ok, "email", "body", None) is None
    assert "item.price" in str(
        template_problem("{% for item in items %}{{ item.price }}{% endfor %}", "email", "body", None)
    )
    assert "items[].name" in str(
        template_problem("{{ items[0].name if items else '' }}", "email", "subject", 150)
    )


def test_sandbox_refuses_unsafe_attribute_access() -> None:
    # `items.__class__` passes the field check (items is a list): only the sandbox stops it
    problem = template_problem("{{ items.__class__.__mro__ }}", "email", "subject", 150)
    assert problem is not None and "unsafe" in problem


def test_jinja_builtins_are_not_unknown_fields() -> None:
    loop = "{% for item in items %}{{ loop.index }}. {{ item.title }} {% endfor %}{{ range(2) | list }}"
    assert template_problem(loop, "email", "body", None) is None


def test_fit_to_limit_cuts_at_a_word_with_an_ellipsis() -> None:
    text, cut = fit_to_limit("Only a few left of the wonderful deluxe edition", 20)
    assert cut and len(text) <= 20 and text.endswith("…") and text.startswith("Only a few left")
    assert fit_to_limit("short", 20) == ("short", False)
    assert fit_to_limit("anything", None) == ("anything", False)


# --- render limits (issue #16): every attack fails at config load with one line naming the limit ---

NESTED_RANGES = "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}"
LITERAL_LOOPS = "{% for a in '" + "a" * 200 + "' %}{% for b in '" + "b" * 200 + "' %}{% endfor %}{% endfor %}"


@pytest.mark.parametrize(
    ("field", "source", "limit"),
    [
        ("body", NESTED_RANGES, "the range limit of 10,000 numbers"),
        ("subject", "{{ 'x' * 300000000 }}", "the size limit of 100,000 characters"),
        (
            "body",
            "{% for i in range(9000) %}{{ 'abcdefghijklmnopqrstuvwxyz' }}{% endfor %}",
            "the output limit of 100,000",
        ),
        ("headline", LITERAL_LOOPS, "the loop limit of 10,000 iterations"),
    ],
)
def test_a_template_over_a_limit_fails_at_config_load_naming_campaign_variant_and_limit(
    tmp_path: Path, field: str, source: str, limit: str
) -> None:
    variants = [{"variant_id": "a", "subject": "Hi"}, {"variant_id": "b", "subject": "Hi", field: source}]
    campaign_file(
        tmp_path / "campaigns", "spring_sale", email_campaign(campaign_id="spring_sale", variants=variants)
    )
    with pytest.raises(ConfigError) as error:
        load_settings(write(tmp_path, minimal()))
    message = str(error.value)
    assert f"campaign spring_sale, variant b, {field}: the template exceeds {limit}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "source",
    [
        "{% set x = 'x'|center(300000000) %}",  # a huge width, through a filter
        "{% set x = 'x'.center(300000000) %}",  # ... a string method
        "{% set x = '{:>300000000}'.format(1) %}",  # ... a format spec
        "{% set x = '%300000000s' % 1 %}",  # ... printf formatting
        "{% set x = 9 ** 999999 %}",  # a huge power
        "{% set s = 'y' * 60000 %}{% set x = ([''] * 60000)|join(s) %}",  # a join multiplying sizes
        "{% set s = 'x' * 60000 %}{% set x = s|replace('', s) %}",  # ... a replace
        "{% set ns = namespace(x='x') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
        "{% set x %}{% for i in range(9000) %}{{ 'x' * 90000 }}{% endfor %}{% endset %}",  # buffered output
        "{% for x in 'ab' recursive %}{{ loop('ab') }}{% endfor %}",  # endless recursion
    ],
)
def test_other_ways_to_build_a_huge_value_are_refused_before_they_allocate(source: str) -> None:
    assert str(template_problem(source, "email", "body", None)).startswith("the template exceeds the ")


def test_limits_hold_in_a_worker_thread_where_no_timer_can_run() -> None:
    problems: list[str | None] = []
    worker = threading.Thread(
        target=lambda: problems.extend(
            template_problem(s, "push", "body", None) for s in (NESTED_RANGES, LITERAL_LOOPS)
        )
    )
    worker.start()
    worker.join()
    assert all(p and p.startswith("the template exceeds the ") for p in problems) and len(problems) == 2


def test_the_time_budget_stops_a_slow_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # a nested loop over literals with empty bodies: without the loop limit, only the clock stops it
    monkeypatch.setattr(templates, "MAX_LOOP_ITERATIONS", 10**9)
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.05)
    slow = "{% for a in '" + "a" * 3000 + "' %}{% for b in '" + "b" * 3000 + "' %}{% endfor %}{% endfor %}"
    assert (
        template_problem(slow, "push", "body", None)
        == "the template exceeds the time limit of 0.05 s per render"
    )


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timer on this platform")
def test_in_the_main_thread_the_timer_interrupts_work_no_sandbox_hook_sees(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def spin(value: str) -> str:  # a filter added after the environment wrapped its own: it runs unchecked
        give_up = time.monotonic() + 5  # fail rather than hang if the timer never fires
        while time.monotonic() < give_up:
            pass
        return value

    monkeypatch.setitem(templates._plain.filters, "spin", spin)
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.05)
    with pytest.raises(TemplateLimitError, match=r"time limit of 0\.05 s"):
        compile_template("{{ segment|spin }}", "push", "body").render(sample_context("push", True))
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) is not None


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="no interval timer on this platform")
def test_a_batch_installs_the_timer_once_and_every_render_in_it_is_still_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def spin(value: str) -> str:
        give_up = time.monotonic() + 5
        while time.monotonic() < give_up:
            pass
        return value

    monkeypatch.setitem(templates._plain.filters, "spin", spin)
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.05)
    before = signal.getsignal(signal.SIGALRM)
    fast = compile_template("{{ segment }}", "push", "body")
    with templates.render_timer():
        assert signal.getsignal(signal.SIGALRM) is templates._expired
        for _ in range(3):  # a render that ends in time leaves the batch's handler and no timer behind
            assert fast.render(sample_context("push", True)) == "active"
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        for _ in range(2):
            with pytest.raises(TemplateLimitError, match=r"time limit of 0\.05 s"):
                compile_template("{{ segment|spin }}", "push", "body").render(sample_context("push", True))
        assert signal.getsignal(signal.SIGALRM) is templates._expired
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_limit_at_render_is_a_template_error_so_the_batch_reports_it_for_the_variant() -> None:
    # a real user's values can differ from the sample's: render_rows turns any TemplateError into a
    # TemplateRenderError naming campaign, variant and field
    template = compile_template("{{ range(user.language|length * 10000) | list | length }}", "push", "body")
    with pytest.raises(TemplateError, match="range limit"):
        template.render(sample_context("push", True))


NORMAL_TEMPLATES = [
    "{% for item in items if item.price_cents > 0 %}{{ loop.index }}/{{ loop.length }}. {{ item.title|upper }} "
    "({{ '%.2f'|format(item.price_cents / 100) }}){{ ', ' if not loop.last }}{% else %}none{% endfor %}",
    "{{ items | map(attribute='title') | first | default('this week') }}",
    "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i * 2 %}{% endfor %}{{ ns.n }} "
    "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ '%s-%d' % ('x', 4) }} {{ 'a' ~ 1 ~ 'b' }} {{ 7 % 3 }}",
    "{% macro card(i) %}<b>{{ i.title }}</b>{% endmacro %}{% for i in items %}{{ card(i) }}{% endfor %}"
    "{% macro boxed() %}[{{ caller() }}]{% endmacro %}{% call boxed() %}{{ segment }}{% endcall %}",
    "{% set x %}Hi {{ user.country }}{% endset %}{{ x|trim }} {{ '{} / {:>5}'.format(segment, campaign.id) }} "
    "{{ items|join(', ', attribute='item_id') }} {{ ', '.join(['a', 'b']) }} {{ segment.replace('a', 'A') }}",
    "{% for x in [[1, [2]], [3]] recursive %}{% if x is iterable %}{{ loop(x) }}{% else %}{{ x }}{% endif %}"
    "{% endfor %}{{ range(5)|list }} {{ items|sum(attribute='price_cents') }} {{ 'x'|center(9) }}|",
    "{% filter upper %}{{ segment }} {% for i in items|reverse %}{{ i.item_id }}{% endfor %}{% endfilter %}"
    "{{ items|batch(2)|list|length }} {{ 'Tom & Jerry <b>' }} {{ items|tojson|length }}",
]


@pytest.mark.parametrize("source", NORMAL_TEMPLATES)
@pytest.mark.parametrize(("channel", "field"), [("email", "body"), ("push", "subject")])
def test_a_normal_template_renders_exactly_as_in_the_plain_sandbox(
    source: str, channel: str, field: str
) -> None:
    plain = SandboxedEnvironment(undefined=StrictUndefined, autoescape=is_html(channel, field))
    # (the field check refuses macros, whose names look like unknown fields; no limit is hit)
    assert "the template exceeds" not in str(template_problem(source, channel, field, None))
    for with_items in (True, False):
        context = sample_context(channel, with_items)
        expected = plain.from_string(source).render(context)
        assert compile_template(source, channel, field).render(context) == expected


def test_a_render_waiting_for_a_core_is_not_over_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is the render's own CPU time: a render stalled by a loaded machine (here a filter that
    waits) renders; one that spins is still stopped (test_the_time_budget_stops_a_slow_loop)."""
    import threading

    def wait(value: str) -> str:  # the thread holds no core while it waits, as when the machine is busy
        time.sleep(0.3)
        return value

    monkeypatch.setitem(templates._plain.filters, "wait", wait)
    monkeypatch.setattr(templates, "RENDER_SECONDS", 0.05)
    template = compile_template("{% for _ in [1, 2] %}{{ segment|wait }}{% endfor %}", "push", "body")
    rendered: list[str] = []
    worker = threading.Thread(target=lambda: rendered.append(template.render(sample_context("push", True))))
    worker.start()  # the nightly flow renders in worker threads, where only the budget's clock runs
    worker.join()
    assert rendered == ["activeactive"]
