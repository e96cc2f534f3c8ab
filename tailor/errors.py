"""The errors a user can act on: the CLI prints their one-line message instead of a traceback."""

from __future__ import annotations

from tailor.config import ConfigError
from tailor.storage import StorageError


def _user_errors() -> tuple[type[BaseException], ...]:
    from tailor.drafts import DraftError
    from tasks.extract import ExtractError
    from tasks.fairness import FairnessError
    from tasks.publish import ConsentViolation
    from tasks.runs import RunInProgress
    from tasks.train import SensitiveFeatureError
    from tasks.validate import DataQualityError
    from tasks.variants import TemplateRenderError

    return (
        ConfigError,
        StorageError,
        ExtractError,
        DataQualityError,
        ConsentViolation,
        TemplateRenderError,
        DraftError,
        FairnessError,
        SensitiveFeatureError,
        RunInProgress,
    )


USER_ERRORS = _user_errors()
