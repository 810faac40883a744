"""The synthetic aging cohort (moved into a package; split into modules in the next commit)."""

from brainage_core.cohorts.synthetic.config import *  # noqa: F403
from brainage_core.cohorts.synthetic.config import __all__ as _config_all
from brainage_core.cohorts.synthetic.model import *  # noqa: F403
from brainage_core.cohorts.synthetic.model import __all__ as _model_all

__all__ = sorted(set(_config_all) | set(_model_all))
