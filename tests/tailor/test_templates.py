from __future__ import annotations

from tailor.templates import compile_template, fit_to_limit, sample_context, template_problem


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
