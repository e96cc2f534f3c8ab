"""Campaign templates: what they may see, how they are checked when the config loads, how they render.

A template sees exactly this context, nothing else (so a message can never leak an email address or a
sensitive attribute):
    user      country, language
    segment   the user's RFM segment name (new, active, loyal, at_risk, lapsed) or "unknown"
    items     the user's top recommended items, each: item_id, title, category, price_cents, reason
    campaign  id, channel

Templates render in Jinja2's sandbox with strict undefined variables. Email bodies are HTML and get
autoescaping; every other field is plain text.

Every render is bounded (the limits below), because the sandbox alone only guards attribute access: a
template with nested `range` loops hung config load and `{{ 'x' * 300000000 }}` built a 300 MB string. A
template over a limit raises TemplateLimitError, a TemplateError whose message names the limit, so config
load reports it like any other template problem. How the limits are enforced:
  - `range` is capped per call and per render; every for-loop iteration (over anything, literals included)
    counts against a per-render budget, through a code generator that wraps each loop's iterable;
  - the operators that multiply sizes (`*`, `**`, `+`, `%`) and every call and filter check the sizes of
    their inputs, and an upper bound of their result, before they run: an operation that would build a
    huge value is refused before it allocates it; a constant factor (escaping, repr) is left to the check
    of the result;
  - every piece of output counts, also inside `{% set %}` blocks and macros, so the output limit caps the
    work of building the text as well as the text;
  - a wall-clock budget per render, checked in the sandbox's hooks; in the main thread a SIGALRM timer also
    interrupts work that passes no hook (a long-running filter).
"""

from __future__ import annotations

import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext
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

# Limits on one render of one field. Real templates stay orders of magnitude below each of them.
# Gmail clips an email past ~102 KB, so no useful body is longer; subjects and push texts are cut to the
# channel_limits (tens to hundreds of characters) anyway.
MAX_OUTPUT_CHARS = 100_000
# characters of any string, or items (plus their own sizes) of any list, a template builds on the way
MAX_VALUE_SIZE = 100_000
# numbers from range(), per call and per render: a template loops over three recommended items
MAX_RANGE = 10_000
# for-loop iterations per render, all loops together (nested loops multiply)
MAX_LOOP_ITERATIONS = 10_000
# products and powers of integers: 9 ** 9 ** 9 would compute for minutes
MAX_NUMBER_BITS = 4_096
# wall clock per render; a render takes microseconds, and a loaded machine must not fail a good template
RENDER_SECONDS = 1.0  # of the render's own CPU time
WALL_ALLOWANCE = 10  # the main thread's signal timer, on the wall clock, allows this many times as long


class TemplateLimitError(TemplateError):
    """A template that went over one of the render limits; the message names the limit."""


def _exceeds(limit: str) -> TemplateLimitError:
    return TemplateLimitError(f"the template exceeds {limit}")


# messages are built when raised: they read the limits at that moment (tests lower them)
def _output_limit() -> TemplateLimitError:
    return _exceeds(f"the output limit of {MAX_OUTPUT_CHARS:,} characters")


def _size_limit() -> TemplateLimitError:
    return _exceeds(f"the size limit of {MAX_VALUE_SIZE:,} characters (or list items) per value")


def _range_limit() -> TemplateLimitError:
    return _exceeds(f"the range limit of {MAX_RANGE:,} numbers per render")


def _loop_limit() -> TemplateLimitError:
    return _exceeds(f"the loop limit of {MAX_LOOP_ITERATIONS:,} iterations per render")


def _number_limit() -> TemplateLimitError:
    return _exceeds(f"the number limit of {MAX_NUMBER_BITS:,} bits")


def _time_limit() -> TemplateLimitError:
    return _exceeds(f"the time limit of {RENDER_SECONDS:g} s per render")


@dataclass
class _Budget:
    """What one render has used so far."""

    deadline: float
    range_numbers: int = 0
    loop_iterations: int = 0
    output_chars: int = 0

    def check_time(self) -> None:
        # the render's own CPU time: on a loaded machine a render waiting for a core is not a slow template,
        # and a wall clock failed whole nights there
        if time.thread_time() > self.deadline:
            raise _time_limit()


# the render running in this thread (or task); None outside a render, e.g. when Jinja folds constants at
# compile time: then sizes are still checked, budgets and the clock are not
_budget: ContextVar[_Budget | None] = ContextVar("tailor_template_budget", default=None)


def _check_time() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.check_time()


_CONTAINERS = (list, tuple, set, frozenset, dict, range, KeysView, ValuesView, ItemsView)
# checked first: isinstance against the abc views above, or against Iterator, is slow (every call and output)
_SCALARS = (int, float, type(None))
_NOT_ITERATORS = (str, int, float, type(None), list, tuple, dict)


def _size(value: Any) -> int:
    """Characters of a string; items of a list, tuple, set or dict plus their own sizes (an item held twice
    counts twice: joining or printing copies it twice). Counting stops once past MAX_VALUE_SIZE."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, _SCALARS) or not isinstance(value, _CONTAINERS):
        return 1
    total, steps, pending = 0, 0, [value]
    while pending and total <= MAX_VALUE_SIZE:
        current = pending.pop()
        steps += 1
        if isinstance(current, str | bytes):
            total += len(current)
        elif isinstance(current, range):
            total += len(current) if len(current) <= MAX_VALUE_SIZE else MAX_VALUE_SIZE + 1
        elif isinstance(current, _CONTAINERS):
            total += len(current)
            if total > MAX_VALUE_SIZE:
                break
            for item in current.items() if isinstance(current, dict) else current:
                if isinstance(item, _SCALARS):
                    continue
                if isinstance(item, str | bytes):
                    total += len(item)
                elif isinstance(item, _CONTAINERS):
                    pending.append(item)
        if steps % 4096 == 0:
            _check_time()  # a self-containing list counts until the limit: keep the clock in view
    return total


def _checked(value: Any) -> Any:
    if _size(value) > MAX_VALUE_SIZE:
        raise _size_limit()
    return value


def _materialized(value: Any) -> Any:
    """An iterator (a filter's generator, reversed(...)) drawn into a list, counting as it goes: a join or a
    format over it would otherwise build its whole result before any size could be checked. A loop variable
    (LoopContext) is an iterator too, but drawing it would advance the loop."""
    if isinstance(value, _NOT_ITERATORS) or not isinstance(value, Iterator) or isinstance(value, LoopContext):
        return value
    items, total = [], 0
    for item in value:
        total += 1 + _size(item)
        if total > MAX_VALUE_SIZE:
            raise _size_limit()
        items.append(item)
        _check_time()
    return items


def _text_size(value: Any) -> int:
    """About how many characters str(value) has, without building it."""
    if isinstance(value, bool) or value is None:
        return 5
    if isinstance(value, int):
        return value.bit_length() // 3 + 2  # decimal digits, generously
    if isinstance(value, float):
        return 330  # '%f' % 1e308 has 309 digits before the point
    return _size(value)


def _big_number(digits: str) -> int:
    # int() refuses digit strings past 4,300 digits; anything past ten digits is over every limit anyway
    return int(digits) if len(digits) < 10 else 10**10


_PRINTF_SPEC = re.compile(r"%[^a-zA-Z%]*")  # flags, mapping key, width and precision of a %-conversion
_BRACES_SPEC = re.compile(r"\{[^{}]*")  # from a replacement field's brace up to the next brace
_NESTED_FIELD = re.compile(r"\{[^{}]*\{")  # '{:{}}': a width taken from the arguments


def _formatted_size(template: str, arguments: Iterable[Any], printf: bool) -> int:
    """An upper bound on the length of `template % arguments` (printf) or `template.format(...)`: every
    field at the widest width written in the template, showing the largest argument. Counting fields
    matters: '{0}{0}{0}...'.format(big) multiplies big."""
    values: list[Any] = []
    for argument in arguments:
        if isinstance(argument, Mapping):  # '%(name)s' % {...}, format_map({...})
            values.extend(argument.values())
        elif printf and isinstance(argument, tuple):
            values.extend(argument)
        else:
            values.append(argument)
    fields, width, dynamic = _format_fields(template, printf)
    if dynamic:  # '%*s' % (300000000, x): the width is an argument
        width = max([width, *(abs(v) for v in values if isinstance(v, int))])
    widest = max((_text_size(v) for v in values), default=0)
    return len(template) + fields * (width + widest)


@lru_cache(maxsize=256)  # a template formats with the same few literals for every user
def _format_fields(template: str, printf: bool) -> tuple[int, int, bool]:
    """How many fields a format string has, the widest width (or precision) written in it, and whether a
    width comes from the arguments."""
    specs = _PRINTF_SPEC.findall(template) if printf else _BRACES_SPEC.findall(template)
    width = max((_big_number(digits) for spec in specs for digits in re.findall(r"\d+", spec)), default=0)
    dynamic = any("*" in spec for spec in specs) if printf else bool(_NESTED_FIELD.search(template))
    return len(specs), width, dynamic


# the int arguments of these multiply: indent(width) and expandtabs(tabsize) per line or tab, tojson's indent
# per nesting level; every other int argument (a width, a count, a precision) only adds
_INT_MULTIPLIES = frozenset({"indent", "expandtabs", "tojson"})


def _expected_size(name: str, subject: Any, arguments: Iterable[Any]) -> int:
    """A cheap upper bound on the size of what `name` (a string method or a filter; '%' for printf
    formatting) makes of `subject` with these arguments, to refuse before running it. The generic bound,
    (size of the subject + 1) x (1 + size of the other arguments), covers replace, join, translate, urlize
    and wordwrap's wrapstring: each can multiply the subject's size by an argument's."""
    arguments = list(arguments)
    if isinstance(subject, str) and name in ("%", "format", "format_map"):
        return _formatted_size(subject, arguments, printf=name == "%")
    size = _size(subject)
    if (
        name == "sum"
        and isinstance(subject, list | tuple)
        and any(isinstance(v, list | tuple) for v in subject)
    ):
        return size * len(subject)  # adding lists one by one copies the growing total every time
    factor, added = 1, 0
    for argument in arguments:
        if isinstance(argument, bool) or argument is None or isinstance(argument, float):
            continue
        if isinstance(argument, int):
            if name in _INT_MULTIPLIES:
                factor += abs(argument)
            else:
                added += abs(argument)
        else:
            factor += _size(argument)
    return (size + 1) * factor + added


def _check_expected(name: str, subject: Any, arguments: Iterable[Any]) -> None:
    if _expected_size(name, subject, arguments) > MAX_VALUE_SIZE:
        raise _size_limit()


def _bounded_range(*args: int) -> range:
    """range(), capped per call and, across calls, per render: nested range loops multiply."""
    numbers = range(*args)
    try:
        count = len(numbers)
    except OverflowError:  # more numbers than a C integer holds
        count = MAX_RANGE + 1
    budget = _budget.get()
    if budget is not None:
        budget.check_time()
        budget.range_numbers += count
        count = budget.range_numbers
    if count > MAX_RANGE:
        raise _range_limit()
    return numbers


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """A filter that checks its inputs' sizes and its result's expected size before it runs, and its
    result's size after. Filters are called directly by compiled templates, not through the sandbox's
    call(), so they are wrapped where the environment keeps them."""
    # a filter marked pass_context/pass_eval_context/pass_environment gets that object first: not data
    skip = 1 if getattr(function, "jinja_pass_arg", None) is not None else 0
    estimate_as = "%" if name == "format" else name  # the format filter is `value % args`

    @wraps(function)  # keeps jinja_pass_arg, which tells Jinja what to pass first
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_time()
        data = [_checked(_materialized(value)) for value in args[skip:]]
        kwargs = {key: _checked(_materialized(value)) for key, value in kwargs.items()}
        if data:
            _check_expected(estimate_as, data[0], [*data[1:], *kwargs.values()])
        return _checked(function(*args[:skip], *data, **kwargs))

    return bounded


def _bounded_lipsum(function: Callable[..., str]) -> Callable[..., str]:
    # lipsum(n, html, min, max) is a global, not a filter: n paragraphs of up to max words
    @wraps(function)
    def bounded(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
        if n * max * 12 > MAX_VALUE_SIZE:  # 12 characters per word is generous
            raise _size_limit()
        return function(n, html, min, max)

    return bounded


class _BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator with three hooks the sandbox does not have: loop iterations, the size of `~`
    concatenations, and every piece of output (also buffered output: {% set %} blocks, macros, call
    blocks), which never passes through Template.render's stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: set[int] = set()  # ids of the for loops' iterable nodes, in this template

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # Jinja refuses custom node types, so the loop's iterable is marked and wrapped where it is visited
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.count_loop(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.check_size(")
        super().visit_Concat(node, frame)
        self.write(")")

    def _output_const_repr(self, group: Iterable[Any]) -> str:
        return f"environment.count_output({super()._output_const_repr(group)})"

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        # count_output(str(check_size(value))): the size is checked before str() copies the value
        self.write("environment.count_output(")
        super()._output_child_pre(node, frame, finalize)
        self.write("environment.check_size(")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(")")
        super()._output_child_post(node, frame, finalize)
        self.write(")")


def _expired(signum: int, frame: Any) -> None:
    """The timer's handler: a signal arriving just as a render ends (its budget gone) must not raise elsewhere."""
    if _budget.get() is not None:
        raise _time_limit()


def _timer_usable() -> bool:
    """Whether this thread may use SIGALRM: signals reach only the main thread, and a timer someone else
    already set (a test timeout) is left alone."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getitimer(signal.ITIMER_REAL)[0] <= 0
    )


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """In the main thread, a SIGALRM timer that interrupts the render even where no sandbox hook runs (a
    long filter). Other threads rely on the hooks' clock checks."""
    if not _timer_usable():
        yield
        return
    # inside render_timer the handler is already ours: only the timer is set
    installed = signal.getsignal(signal.SIGALRM) is _expired
    previous = None if installed else signal.signal(signal.SIGALRM, _expired)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not installed:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def render_timer() -> Iterator[None]:
    """Around a batch of renders: the timer's handler installed once for all of them, not at each render
    (installing and restoring it cost about a fifth of a short template's render). Each render still sets
    its own timer and budget."""
    if not _timer_usable():
        yield
        return
    previous = signal.signal(signal.SIGALRM, _expired)
    try:
        yield
    finally:
        signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def _bounded() -> Iterator[None]:
    """A fresh budget, deadline and (in the main thread) timer for one render or compile; inside another
    one, that one's hold."""
    if _budget.get() is not None:
        yield
        return
    budget = _Budget(deadline=time.thread_time() + RENDER_SECONDS)
    token = _budget.set(budget)
    try:
        # the timer counts wall time (a signal timer on this thread's CPU time does not exist): a backstop for
        # work no hook sees, given room for a busy machine
        with _alarm(RENDER_SECONDS * WALL_ALLOWANCE):
            yield
    finally:
        _budget.reset(token)


class BoundedTemplate(Template):
    """A template whose render runs within the limits."""

    def render(self, *args: Any, **kwargs: Any) -> str:
        try:
            with _bounded():
                return super().render(*args, **kwargs)
        except RecursionError:  # a macro or a recursive loop calling itself without end
            raise _exceeds(f"the nesting limit of Python ({sys.getrecursionlimit():,} frames)") from None
        except MemoryError:
            raise _exceeds("the memory available") from None

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[str]:
        # streaming would run template code between the caller's steps, outside the budget and the timer
        yield self.render(*args, **kwargs)


class _BoundedSandbox(SandboxedEnvironment):
    """The sandbox with the render limits (see the module's docstring)."""

    code_generator_class = _BoundedCodeGenerator
    template_class = BoundedTemplate
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.globals["range"] = _bounded_range
        self.globals["lipsum"] = _bounded_lipsum(self.globals["lipsum"])
        self.filters = {name: _bounded_filter(name, function) for name, function in self.filters.items()}

    def compile(self, *args: Any, **kwargs: Any) -> Any:
        # compiling folds constant expressions, filters on literals included: that runs template code too
        with _bounded():
            return super().compile(*args, **kwargs)

    def count_loop(self, iterable: Iterable[Any]) -> Iterator[Any]:
        budget = _budget.get()
        for item in iterable:
            if budget is not None:
                budget.loop_iterations += 1
                if budget.loop_iterations > MAX_LOOP_ITERATIONS:
                    raise _loop_limit()
                budget.check_time()
            yield item

    def count_output(self, text: str) -> str:
        budget = _budget.get()
        if budget is not None:
            budget.output_chars += len(text)
            if budget.output_chars > MAX_OUTPUT_CHARS:
                raise _output_limit()
            budget.check_time()
        return text

    def check_size(self, value: Any) -> Any:
        return _checked(value)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_time()
        _checked(left)
        _checked(right)
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_expected("%", left, [right])
        elif operator == "+" and _size(left) + _size(right) > MAX_VALUE_SIZE:  # numbers have size 1
            raise _size_limit()
        return _checked(super().call_binop(context, operator, left, right))

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_time()
        args = tuple(_checked(_materialized(value)) for value in args)
        # _loop_vars/_block_vars: the variables of the enclosing loop, passed along by Jinja, not data
        kwargs = {
            key: value if key in ("_loop_vars", "_block_vars") else _checked(_materialized(value))
            for key, value in kwargs.items()
        }
        data = [*args, *(v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars"))]
        method = getattr(obj, "__wrapped__", obj)  # the sandbox hands str.format out wrapped
        subject = getattr(method, "__self__", None)
        if isinstance(subject, str):  # 'x'.center(n), sep.join(...), s.replace(...), fmt.format(...)
            _check_expected(getattr(method, "__name__", ""), _checked(subject), data)
        elif isinstance(subject, _CONTAINERS):  # list.extend(list) doubles a list
            _checked(subject)
        if isinstance(obj, LoopContext) and args:  # loop(children) in a recursive loop: count those too
            args = (self.count_loop(args[0]), *args[1:])
        return _checked(super().call(context, obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        _check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _check_time()
        return super().getitem(obj, argument)


def _check_power(base: Any, exponent: Any) -> None:
    # only an int to a positive int grows without end; floats overflow at once, |base| <= 1 stays small
    growing = isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1
    if growing and exponent * math.log2(abs(base)) > MAX_NUMBER_BITS:
        raise _number_limit()


def _check_product(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_NUMBER_BITS:
            raise _number_limit()
        return
    count, sequence = (left, right) if isinstance(left, int) else (right, left)
    repetition = isinstance(count, int) and isinstance(sequence, str | list | tuple)
    if repetition and _size(sequence) * count > MAX_VALUE_SIZE:
        raise _size_limit()


_plain = _BoundedSandbox(undefined=StrictUndefined, autoescape=False)
_html = _BoundedSandbox(undefined=StrictUndefined, autoescape=True)


def is_html(channel: str, field: str) -> bool:
    return channel == "email" and field == "body"


def compile_template(source: str, channel: str, field: str) -> Template:
    return (_html if is_html(channel, field) else _plain).from_string(source)


def context_names(source: str, channel: str, field: str) -> frozenset[str]:
    """The context's top-level names the template reads (every name it looks up and does not set itself):
    its text depends on the values of these alone, so one render serves every user who has the same ones."""
    return frozenset(meta.find_undeclared_variables((_html if is_html(channel, field) else _plain).parse(source)))


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
    recommended items, a render over one of the limits, or fixed text already longer than the channel
    allows."""
    environment = _html if is_html(channel, field) else _plain
    try:
        tree = environment.parse(source)
    except TemplateError as error:
        return f"syntax error: {error}"
    unknown = sorted(set(_unknown_fields(tree)))
    if unknown:
        return f"unknown field(s) {', '.join(unknown)}; templates may use {describe_context()}"
    try:
        template = environment.from_string(source)
    except TemplateLimitError as error:  # constant folding at compile time ran out of time
        return str(error)
    for with_items in (True, False):
        try:
            template.render(sample_context(channel, with_items))
        except TemplateLimitError as error:  # the message names the limit: "the template exceeds ..."
            return str(error)
        except TemplateError as error:
            who = "a user with" if with_items else "a user without"
            return f"fails for {who} recommended items: {error}"
        except (TypeError, ValueError, LookupError, ArithmeticError) as error:
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
