from __future__ import annotations

import re

import pytest

from tailor import human


def _plain(text: str) -> str:
    assert not re.search(r"\de[+-]?\d", text), text  # 2.6e+03, 4e-05
    return text


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (2600, 3, "2,600"),
        (2600.0, 3, "2,600"),  # `.2g` wrote 2.6e+03
        (1_234_567.8, 3, "1,234,568"),
        (999.7, 3, "1,000"),  # `.3g` wrote 1e+03
        (12.345, 3, "12.3"),
        (0.71, 3, "0.71"),
        (0.00004, 3, "0.00004"),  # `.3g` wrote 4e-05
        (-0.000123456, 3, "-0.000123"),
        (3e-7, 2, "0.0000003"),
        (1e-15, 3, "0"),  # past ten decimals
        (0, 3, "0"),
    ],
)
def test_number_groups_counts_and_writes_plain_decimals(value: float, digits: int, expected: str) -> None:
    assert _plain(human.number(value, digits)) == expected


def test_missing_values_are_a_dash() -> None:
    for value in (None, float("nan"), float("inf"), "12", True):
        assert human.number(value) == "-" and human.share(value) == "-" and human.p_value(value) == "-"
    assert human.money(None) == "-"


def test_a_setting_reads_as_configured() -> None:
    assert [_plain(human.setting(v)) for v in (2600.0, 1e6, 0.8125, 0.00005, 30)] == [
        "2,600", "1,000,000", "0.8125", "0.00005", "30",
    ]  # fmt: skip


def test_money_has_two_decimals_and_its_currency_when_known() -> None:
    assert human.money(1234.5) == "1,234.50"
    assert human.money(2_600_000.0, "GBP") == "2,600,000.00 GBP"


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [
        (0.125, 1, "12.5%"),
        (0.5, 1, "50%"),
        (1.0, 1, "100%"),
        (0.005, 1, "0.5%"),
        (0.00004, 1, "0.004%"),  # not 0% and not 4e-05
        (0.625, 0, "62%"),
        (26.0, 1, "2,600%"),
        (0.0, 1, "0%"),
    ],
)
def test_share_is_a_percentage_that_keeps_a_small_share_visible(
    value: float, digits: int, expected: str
) -> None:
    assert _plain(human.share(value, digits)) == expected


def test_p_values_are_plain_and_tiny_ones_read_under_a_thousandth() -> None:
    assert [_plain(human.p_value(p)) for p in (3e-7, 0.00099, 0.001, 0.0123, 0.41, 1.0)] == [
        "< 0.001", "< 0.001", "0.001", "0.012", "0.41", "1",
    ]  # fmt: skip
    assert human.p_phrase(3e-7) == "p < 0.001"
    assert human.p_phrase(0.0123, "adjusted p") == "adjusted p = 0.012"
