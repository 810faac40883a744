"""Grad-RAM saliency maps for brain-age regression (being split into modules; see ``gradram``)."""

from __future__ import annotations

from brainage_core.analysis.interpret.gradram import *  # noqa: F403
from brainage_core.analysis.interpret.gradram import __all__  # noqa: F401
