"""Data-quality suites as data: one YAML file per table under `config/quality/<stage>/<table>.yaml`.

Each expectation is a Great Expectations 1.x expectation (`type`, `kwargs`) with a `rule` name, a
`severity` (`critical` stops the run before training and publishing, `warning` is reported) and, for
row-level rules, `quarantine: true` (failing rows move to `quarantine.<table>`). Time bounds may be
written relative to the run: `cutoff` (the run's data cutoff) or `cutoff-7300d`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tailor.config import ConfigError, validation_problems

SUITES_DIR = Path(str(resources.files("tailor.defaults"))) / "quality"
STAGES = ("raw", "features")
_RELATIVE_TIME = re.compile(r"^cutoff(?:-(\d+)d)?$")
_RULE = re.compile(r"^[a-z][a-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectationSpec(Strict):
    rule: str = Field(description="a short name, shown in reports and quarantine")
    type: str = Field(
        description="a Great Expectations expectation, e.g. expect_column_values_to_not_be_null"
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)
    severity: Literal["critical", "warning"] = "critical"
    quarantine: bool = Field(False, description="move failing rows to quarantine instead of failing the run")
    description: str = ""

    @field_validator("rule")
    @classmethod
    def _rule_name(cls, value: str) -> str:
        if not _RULE.match(value):
            raise ValueError("must be lower_snake_case")
        return value

    @field_validator("type")
    @classmethod
    def _known_expectation(cls, value: str) -> str:
        if expectation_class(value) is None:
            raise ValueError(f"{value!r} is not a Great Expectations expectation")
        return value


class VolumeSpec(Strict):
    min_ratio: float = Field(0.5, ge=0, description="newest day's rows over the trailing median, lower bound")
    max_ratio: float = Field(3.0, gt=0, description="upper bound of the same ratio")
    trailing_days: int = Field(14, ge=1, description="file days the median is taken over")
    min_history: int = Field(7, ge=1, description="file days needed before the check applies")
    severity: Literal["critical", "warning"] = "critical"


class FreshnessSpec(Strict):
    max_lag_days: int = Field(1, ge=1, description="newest file at most this many days before the run date")
    severity: Literal["critical", "warning"] = "critical"


class TableSuite(Strict):
    table: str
    stage: Literal["raw", "features"]
    description: str = ""
    quarantine_max_share: float = Field(
        0.01, ge=0, le=1, description="above this share, quarantine is critical"
    )
    expectations: list[ExpectationSpec] = Field(min_length=1)
    volume: VolumeSpec | None = None
    freshness: FreshnessSpec | None = None


def expectation_class(type_name: str) -> type | None:
    import great_expectations as gx

    class_name = "".join(part.title() for part in type_name.split("_"))
    found = getattr(gx.expectations, class_name, None)
    return found if isinstance(found, type) else None


def resolve_kwargs(kwargs: dict[str, Any], cutoff: datetime) -> dict[str, Any]:
    """Replace run-relative time bounds (`cutoff`, `cutoff-<days>d`) by timestamps."""
    import pandas as pd

    resolved = {}
    for key, value in kwargs.items():
        match = _RELATIVE_TIME.match(value) if isinstance(value, str) else None
        if match:
            days = int(match.group(1) or 0)
            # the cutoff itself is excluded: the run sees data strictly before it
            stamp = cutoff - timedelta(days=days) - (timedelta(microseconds=1) if days == 0 else timedelta(0))
            resolved[key] = pd.Timestamp(stamp)
        else:
            resolved[key] = value
    return resolved


def load_suite(path: Path) -> TableSuite:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read suite: {error}") from None
    try:
        return TableSuite.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_problems(error, TableSuite)}") from None


def load_suites(stage: str, folder: Path | None = None) -> dict[str, TableSuite]:
    """Every suite of a stage, by table name; a file must name the table it is named after."""
    base = (folder or SUITES_DIR) / stage
    suites = {}
    for path in sorted(base.glob("*.yaml")):
        suite = load_suite(path)
        if suite.table != path.stem or suite.stage != stage:
            raise ConfigError(f"{path}: key 'table'/'stage' must be {path.stem!r}/{stage!r}")
        rules = [e.rule for e in suite.expectations]
        if len(set(rules)) != len(rules):
            raise ConfigError(f"{path}: key 'expectations': rule names must be unique")
        suites[suite.table] = suite
    return suites
