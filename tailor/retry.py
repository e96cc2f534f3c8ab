"""Retry policy helpers: I/O tasks retry with backoff, but not on errors that a retry cannot fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def retry_unless(*permanent: type[BaseException]) -> Callable[[Any, Any, Any], bool]:
    """A Prefect `retry_condition_fn`: retry unless the failure is one of the `permanent` errors
    (a bad file stays bad however often it is read)."""

    def should_retry(task: Any, task_run: Any, state: Any) -> bool:
        error = state.data if isinstance(state.data, BaseException) else None
        return not isinstance(error, permanent)

    return should_retry
