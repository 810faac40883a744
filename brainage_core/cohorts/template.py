"""Where the MNI ICBM152 2009a template lives: the copy inside the installed nilearn wheel.

Both cohorts use it: the synthetic cohort edits its T1 and tissue maps, the IXI import registers
every scan to its T1. This module is the one place that knows the file names and the folder, so
no run ever downloads a template.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["TEMPLATE_FILES", "mni_template_dir", "mni_template_path"]

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def mni_template_dir() -> Path:
    """Folder of the MNI ICBM152 2009a (symmetric) templates inside the installed nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is not installed; brainage needs the MNI templates in its wheel")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"


def mni_template_path(name: str) -> Path:
    """The template file ``name`` (``t1``, ``gm`` or ``wm``: T1 image or tissue probability map).

    Raises:
        KeyError: an unknown name.
        FileNotFoundError: the file is missing from the nilearn wheel.
    """
    if name not in TEMPLATE_FILES:
        raise KeyError(f"unknown template {name!r}; choose one of {sorted(TEMPLATE_FILES)}")
    path = mni_template_dir() / TEMPLATE_FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"MNI template missing: {path}; reinstall nilearn (>= 0.10), which ships it")
    return path
