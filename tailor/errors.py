"""The errors a user can act on: the CLI prints their one-line message instead of a traceback."""

from __future__ import annotations

from tailor.config import ConfigError
from tailor.storage import StorageError


def _user_errors() -> tuple[type[BaseException], ...]:
    from tailor.drafts import DraftError
    from tailor.generate import GenerateSizeError
    from tailor.prefect_api import PrefectServerError
    from tailor.tasks.extract import ExtractError
    from tailor.tasks.fairness import FairnessError
    from tailor.tasks.features import TrainingWindowError
    from tailor.tasks.publish import ConsentViolation
    from tailor.tasks.runs import RunInProgress
    from tailor.tasks.train import SensitiveFeatureError
    from tailor.tasks.validate import DataQualityError
    from tailor.tasks.variants import TemplateRenderError

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
        TrainingWindowError,
        RunInProgress,
        PrefectServerError,
        GenerateSizeError,
    )


USER_ERRORS = _user_errors()
