"""The data-quality gate against a catalogue of bad inputs, each run through the real nightly flow.

A baseline night (RUN_DATE) is published first. Each defect that stops the run (an extract error or a
critical expectation) gets a next day of its own and must leave the baseline as the published
`latest.json`. The defects the gate absorbs (quarantined rows, a warning) share one next day, each on rows
of its own, which must publish without the bad rows and account for every one of them.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from tailor.config import load_settings
from tailor.flows.nightly import nightly
from tailor.tasks.extract import ExtractError
from tailor.tasks.validate import DataQualityError
from tailor.warehouse import connect
from tests.conftest import DATA_END, RUN_DATE
from tests.published import run_folder

pytestmark = pytest.mark.integration
NEXT_RUN = RUN_DATE + timedelta(days=1)
NEW_DAY = RUN_DATE.isoformat()  # the day the next night's new files cover
LAST_DAY = DATA_END.isoformat()


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory, small_company: Path, prefect_harness) -> Path:
    root = tmp_path_factory.mktemp("gate") / "company"
    shutil.copytree(small_company, root)
    config = yaml.safe_load((root / "tailor.yaml").read_text())
    config["publish"]["target"] = "file://published"
    (root / "tailor.yaml").write_text(yaml.safe_dump(config))
    nightly(config_path=str(root / "tailor.yaml"), run_date=RUN_DATE)
    return root


def latest(company: Path) -> str:
    return json.loads((company / "published" / "latest.json").read_text())["run_date"]


def source(company: Path, table: str, day: str = LAST_DAY) -> list[str]:
    return (company / "sources" / table / f"{day}.csv").read_text().splitlines()


def write(company: Path, table: str, lines: list[str], day: str = NEW_DAY, raw: bytes | None = None) -> None:
    path = company / "sources" / table / f"{day}.csv"
    if raw is not None:
        path.write_bytes(raw)
    else:
        path.write_text("\n".join(lines) + "\n")


def next_day_events(company: Path) -> list[str]:
    """A normal next day of interactions: the last day's events, a day later."""
    return [line.replace(f"{LAST_DAY} ", f"{NEW_DAY} ") for line in source(company, "interactions")]


def with_events(edit: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def make(company: Path) -> None:
        lines = next_day_events(company)
        write(company, "interactions", [lines[0], *edit(lines[1:])])

    return make


def replace_field(line: str, index: int, value: str) -> str:
    fields = line.split(",")
    fields[index] = value
    return ",".join(fields)


def normal_day(company: Path) -> None:
    write(company, "interactions", next_day_events(company))


def truncated(company: Path) -> None:
    text = "\n".join(next_day_events(company))
    write(company, "interactions", [], raw=text[: len(text) // 2].encode())


def wrong_delimiter(company: Path) -> None:
    write(company, "interactions", [line.replace(",", ";") for line in next_day_events(company)])


def not_utf8(company: Path) -> None:
    lines = next_day_events(company)
    body = ("\n".join(lines[:5]) + "\n").encode() + "u001,i001,vi\u00e9w,2026-11-21 01:00:00,\n".encode(
        "latin-1"
    )
    write(company, "interactions", [], raw=body)


def empty_file(company: Path) -> None:
    write(company, "interactions", [], raw=b"")


def missing_column(company: Path) -> None:
    lines = next_day_events(company)
    write(company, "interactions", [",".join(line.split(",")[:2] + line.split(",")[3:]) for line in lines])


def changed_type(company: Path) -> None:
    lines = next_day_events(company)
    write(company, "interactions", [lines[0], *(replace_field(line, 3, "yesterday") for line in lines[1:])])


def first_file(company: Path, table: str) -> list[str]:
    return sorted((company / "sources" / table).glob("*.csv"))[0].read_text().splitlines()


def duplicate_user_ids(company: Path) -> None:
    normal_day(company)
    users = first_file(company, "users")
    header, first = users[0], users[1]
    write(
        company,
        "users",
        [
            header,
            first.replace(first.split(",")[1], f"{NEW_DAY} 08:00:00"),
            first.replace(first.split(",")[1], f"{NEW_DAY} 09:00:00"),
        ],
    )


def ninety_percent_fewer(company: Path) -> None:
    lines = next_day_events(company)
    write(company, "interactions", lines[: max(2, len(lines) // 10)])


def stopped_arriving(company: Path) -> None:
    pass  # no interactions file for the new day


def absorbed_defects(company: Path) -> None:
    """One next day holding every defect the gate absorbs, each on rows of its own: one night checks them all."""
    lines = next_day_events(company)
    header, rows = lines[0], lines[1:]
    for index, (field, value) in enumerate(ABSORBED_EVENT_EDITS):
        rows[index] = replace_field(rows[index], field, value)
    rows += source(company, "interactions")[1:4]  # already delivered in yesterday's file
    write(
        company, "interactions", [header + ",device", *(row + ",tablet" for row in rows)]
    )  # unmapped column
    exposures = (
        sorted((company / "sources" / "campaign_exposures").glob("*.csv"))[-1].read_text().splitlines()
    )
    write(
        company, "campaign_exposures", [exposures[0], replace_field(exposures[1], 7, "-500"), *exposures[2:]]
    )
    write(
        company,
        "consents",
        [
            "user_id,purpose,is_granted,updated_at",
            f"u001,profiling,no,{NEW_DAY} 10:00:00",
            f"u002,profiling,yes,{NEW_DAY} 10:00:00",
        ],
    )


# (field index, value) of the interactions rows the absorbed night breaks, one row each
ABSORBED_EVENT_EDITS = [
    (3, "2031-01-01 00:00:00"),  # a future timestamp
    (0, ""),  # a null user id
    (1, "i_not_in_catalogue"),  # an unknown item
    (3, "not a time"),  # a wrong type in one value
    (2, "teleport"),  # an unknown event type
]


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], None] | None  # None: one of the defects of absorbed_defects
    outcome: str  # extract_error | critical | quarantined | warning
    message: str  # a regex the error, or the failing check, must match
    table: str = "interactions"
    rule: str = ""


CATALOGUE = [
    Case("truncated file", truncated, "extract_error", r"interactions/2026-11-21\.csv: line \d+ has \d field\(s\), expected 5"),
    Case("wrong delimiter", wrong_delimiter, "extract_error", r"2026-11-21\.csv: column 'user_id'.*looks delimited by ';'"),
    Case("non-UTF-8 bytes", not_utf8, "extract_error", r"2026-11-21\.csv: not valid utf-8 text"),
    Case("empty file", empty_file, "extract_error", r"interactions: file \S+2026-11-21\.csv: file is empty"),
    Case("missing column", missing_column, "extract_error", r"2026-11-21\.csv: column 'event_type' \(mapped to interactions\.event_type\) is missing"),
    Case("wrong type in a whole column", changed_type, "extract_error", r"2026-11-21\.csv: column interactions\.occurred_at changed type"),
    Case("duplicate user ids in a file", duplicate_user_ids, "critical", r"users: user_id_unique_in_file", "users", "user_id_unique_in_file"),
    Case("a day with 90% fewer rows", ninety_percent_fewer, "critical", r"interactions: volume .*0\.\d\dx the trailing median", rule="volume"),
    Case("a source that stopped arriving", stopped_arriving, "critical", r"interactions: freshness .*newest file 2026-11-20", rule="freshness"),
    Case("many future timestamps", with_events(lambda rows: [replace_field(r, 3, "2031-01-01 00:00:00") if i % 5 == 0 else r for i, r in enumerate(rows)]), "critical", r"interactions: quarantine_share .* in sources/interactions/2026-11-21\.csv.*not_in_future on occurred_at: \d+", rule="quarantine_share"),
    Case("a few future timestamps", None, "quarantined", "not_in_future", rule="not_in_future"),
    Case("null ids", None, "quarantined", "user_id_present", rule="user_id_present"),
    Case("unknown item ids", None, "quarantined", "known_item", rule="known_item"),
    Case("a wrong type in one value", None, "quarantined", "values_parse", rule="values_parse"),
    Case("an unknown event type", None, "quarantined", "known_event_type", rule="known_event_type"),
    Case("duplicate events across two daily files", None, "quarantined", "not_a_duplicate", rule="not_a_duplicate"),
    Case("negative revenue", None, "quarantined", "revenue_not_negative", "campaign_exposures", "revenue_not_negative"),
    Case("an extra column", None, "warning", r"column\(s\) device not mapped", rule="extract_warning"),
    Case("consent given as yes/no", None, "warning", r"is_granted'?: 2 value\(s\) spelled yes/no", "consents", "extract_warning"),
]  # fmt: skip
STOPPING = [case for case in CATALOGUE if case.make is not None]
ABSORBED = [case for case in CATALOGUE if case.make is None]


@pytest.mark.parametrize("case", STOPPING, ids=[case.name for case in STOPPING])
def test_a_defect_that_stops_the_night(case: Case, baseline: Path, tmp_path: Path) -> None:
    assert case.make is not None
    company = tmp_path / "company"
    shutil.copytree(baseline, company)
    case.make(company)
    state = nightly(config_path=str(company / "tailor.yaml"), run_date=NEXT_RUN, return_state=True)
    settings = load_settings(company / "tailor.yaml")
    assert state.is_failed(), case.name
    expected = ExtractError if case.outcome == "extract_error" else DataQualityError
    with pytest.raises(expected) as error:
        state.result()
    assert re.search(case.message, str(error.value)), str(error.value)
    assert latest(company) == RUN_DATE.isoformat()
    assert not (company / "published" / "runs" / NEXT_RUN.isoformat()).exists()
    with connect(settings) as con:  # the failed night forgot its loads: the next one checks them again
        left = con.execute(
            "select count(*) from meta.loaded_files where loaded_run_date = $d", {"d": NEXT_RUN}
        )
        assert left.fetchall()[0][0] == 0


@pytest.fixture(scope="module")
def absorbed_night(baseline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    company = tmp_path_factory.mktemp("absorbed") / "company"
    shutil.copytree(baseline, company)
    absorbed_defects(company)
    state = nightly(config_path=str(company / "tailor.yaml"), run_date=NEXT_RUN, return_state=True)
    assert state.is_completed(), state.message
    return company


@pytest.mark.parametrize("case", ABSORBED, ids=[case.name for case in ABSORBED])
def test_a_defect_the_gate_absorbs(case: Case, absorbed_night: Path) -> None:
    company = absorbed_night
    settings = load_settings(company / "tailor.yaml")
    assert latest(company) == NEXT_RUN.isoformat()
    with connect(settings) as con:
        failing = con.execute(
            "select rule, severity, unexpected_sample from marts.data_quality "
            "where run_date = $d and table_name = $t and rule = $r and not is_success",
            {"d": NEXT_RUN, "t": case.table, "r": case.rule},
        ).fetchall()
        assert failing, f"no failing {case.rule} check recorded for {case.table}"
        assert failing[0][1] == "warning"
        if case.outcome == "warning":
            assert any(re.search(case.message, sample) for sample in failing[0][2])
            return
        quarantined = con.execute(
            f"select failed_rules, original_values, source_file, row_key from quarantine.{case.table} "
            "where run_date = $d",
            {"d": NEXT_RUN},
        ).fetchall()
        mine = [row for row in quarantined if case.rule in row[0]]
        assert mine, f"no row quarantined by {case.rule}"
        assert all(original and source_file.endswith(".csv") for _, original, source_file, _ in mine)
        still_raw = con.execute(
            f"select count(*) from raw.{case.table} where list_contains($keys, _row_key)",
            {"keys": [row[3] for row in quarantined]},
        ).fetchall()[0][0]
    assert still_raw == 0  # quarantined rows left raw, so no feature or model ever sees them
    manifest = json.loads((run_folder(company / "published", NEXT_RUN) / "manifest.json").read_text())
    assert manifest["data_quality"]["quarantined_rows"][case.table] == len(quarantined)
