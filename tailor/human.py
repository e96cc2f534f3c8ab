"""Numbers in the words people read: segment descriptions, allocation reasons, experiment verdicts, fairness
texts and the report. Never scientific notation, whatever the size (Python's `:g`, `%g` and `str(float)`
turn 2600000.0 into 2.6e+06 and 0.00004 into 4e-05):

- `number`: counts grouped (2,600), other values to a few significant digits in plain decimals
  (1,234 / 12.3 / 0.00004);
- `setting`: a configured value as it was written (2,600 days, 0.8125), to `:g`'s six significant digits;
- `money`: two decimals, grouped, with the currency's code when it is known (1,234.50 GBP);
- `share`: a share as a percentage (12.5%), a small one still visible (0.004%, not 0%);
- `p_value`, `p_phrase`: a p-value to two significant digits, a tiny one as "< 0.001" (p < 0.001).
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "-"
# past this many decimals a value reads as 0 (a plain decimal of 1e-300 would be unreadable too)
MAX_DECIMALS = 10
# below this a p-value is "< 0.001": its digits say nothing more to anyone deciding
SMALLEST_P = 0.001


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _trimmed(text: str) -> str:
    """Without the trailing zeros of its decimals (12.50 -> 12.5, 3.00 -> 3), and never "-0"."""
    if "." in text:
        text = text.rstrip("0").removesuffix(".")
    return "0" if text == "-0" else text


def number(value: Any, digits: int = 3) -> str:
    """A count grouped in thousands (2,600); any other value to `digits` significant digits in plain
    decimals, grouped, whole numbers without decimals: 2600.0 -> 2,600, 1234567.8 -> 1,234,568,
    12.345 -> 12.3, 0.00004 -> 0.00004. None, NaN and infinities are "-"."""
    if not _is_number(value):
        return MISSING
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(max(digits - 1 - magnitude, 0), MAX_DECIMALS)
    return _trimmed(f"{value:,.{decimals}f}")


def setting(value: Any) -> str:
    """A configured threshold as written, to six significant digits like `:g` but never in scientific
    notation: 2600.0 -> 2,600, 1e6 -> 1,000,000, 0.8125 -> 0.8125, 0.00005 -> 0.00005."""
    return number(value, 6)


def money(value: Any, currency: str | None = None) -> str:
    """An amount of money with two decimals, grouped, followed by its currency code when known:
    1234.5 -> 1,234.50 (GBP)."""
    if not _is_number(value):
        return MISSING
    return f"{value:,.2f}" + (f" {currency}" if currency else "")


def share(value: Any, digits: int = 1) -> str:
    """A share (0 to 1) as a percentage with up to `digits` decimals: 0.125 -> 12.5%, 0.5 -> 50%. Under 1%
    two significant digits keep a small share visible: 0.00004 -> 0.004%, never 0% for a share above 0."""
    if not _is_number(value):
        return MISSING
    percent = 100 * value
    if percent == 0 or abs(percent) >= 1:
        return _trimmed(f"{percent:,.{digits}f}") + "%"
    return number(percent, 2) + "%"


def p_value(value: Any) -> str:
    """A p-value as analysts read it, in plain decimals: two significant digits (0.032, 0.0012), "< 0.001"
    below 0.001."""
    if not _is_number(value):
        return MISSING
    if value < SMALLEST_P:
        return f"< {SMALLEST_P}"
    return number(value, 2)


def p_phrase(value: Any, name: str = "p") -> str:
    """A p-value in a sentence: "p = 0.032", "p < 0.001" (`name` says which: "adjusted p")."""
    shown = p_value(value)
    return f"{name} {shown}" if shown.startswith("<") else f"{name} = {shown}"
