"""Import the IXI T1 scans (being split into modules; for now everything lives in :mod:`.importer`)."""

from brainage_core.cohorts.ixi.importer import *  # noqa: F403
from brainage_core.cohorts.ixi.importer import __all__  # noqa: F401
