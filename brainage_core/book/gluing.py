"""Glue a chapter's numbers and sentences into its text (myst_nb ``glue``), one call per dict.

The analysis modules return the values a chapter quotes as plain dicts (numbers and sentences);
:func:`glue_values` hands each one to :func:`myst_nb.glue` without displaying it, so a notebook
cell that glues is one line.
"""

from __future__ import annotations

from collections.abc import Mapping

from IPython.display import Markdown
from myst_nb import glue

__all__ = ["glue_values"]


def glue_values(values: Mapping[str, object], prefix: str = "") -> None:
    """Glue every value under ``prefix + name``, undisplayed.

    A ``str`` is glued as Markdown (read in the text with ``{glue:md}``); any other value as
    itself (read with ``{glue:text}``, e.g. ``{glue:text}`name:.2f```).

    Args:
        values: glue name (without ``prefix``) -> value.
        prefix: prepended to every name, e.g. ``"abl_"`` for the ablation chapter.
    """
    for name, value in values.items():
        glue(prefix + name, Markdown(value) if isinstance(value, str) else value, display=False)
