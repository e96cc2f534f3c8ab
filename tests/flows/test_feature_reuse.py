"""A rerun of a night reuses its features through Prefect's cache; `force` and new data rebuild them."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tailor.flows.nightly import nightly
from tests.conftest import RUN_DATE
from tests.flows.test_operations import configure

pytestmark = pytest.mark.integration


def build_features_state(flow_state) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterName,
    )

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="build-features")),
        )
    assert len(runs) == 1
    return runs[0].state.name


def test_a_rerun_of_the_night_reuses_its_features_and_force_rebuilds_them(
    company: Path, prefect_harness
) -> None:
    config_path = str(configure(company))
    first = nightly(config_path=config_path, run_date=RUN_DATE, return_state=True)
    again = nightly(config_path=config_path, run_date=RUN_DATE, return_state=True)
    forced = nightly(config_path=config_path, run_date=RUN_DATE, force=True, return_state=True)
    assert [build_features_state(s) for s in (first, again, forced)] == ["Completed", "Cached", "Completed"]
    # the reused features give the same outputs
    assert again.result()["feature_rows"] == first.result()["feature_rows"] == forced.result()["feature_rows"]
    # a new file for the night is new data: no reuse
    source = next((company / "sources" / "interactions").glob("*.csv"))
    (source.parent / f"{(RUN_DATE - timedelta(days=1)).isoformat()}-late.csv").write_text(
        "\n".join(source.read_text().splitlines()[:2]) + "\n"  # one event, delivered again
    )
    later = nightly(config_path=config_path, run_date=RUN_DATE, return_state=True)
    assert build_features_state(later) == "Completed"
