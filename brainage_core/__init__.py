"""brainage_core: brain-age estimation from T1-weighted MRI with Rank-N-Contrast.

One module per idea, with data flowing one way (nothing outside ``book/`` imports ``book/``)::

    cohorts/ (synthetic phantom, IXI import) -> manifest -> imaging, data (cached tensors)
      -> models + losses -> engine, train -> rundir (the run directory) -> inference
      -> analysis/ (metrics, evaluation, compare, crossval, clinical, interpret) -> book/

* ``config`` holds every default once (``RunConfig``, ``CohortConfig``) and the dotted
  ``section.key=value`` overrides spoken by the CLI, the notebooks and ``book/runs.yml``;
  ``config_loader`` turns dictionaries into validated dataclasses, listing every problem.
* ``manifest`` and ``scan_checks`` validate the data; ``imaging`` and ``data`` turn scans into
  cached, augmented tensors.
* ``models`` (MONAI 3D ResNet), ``losses`` (RNC and the baselines), ``engine`` (the per-epoch
  trainer, ``compute_loss``), ``train`` (runs: lock, resume, ownership), ``distributed`` (DDP),
  ``tuning`` (Optuna studies on validation data), ``tuned`` (the tuned settings file).
* ``rundir`` is the one reader and writer of a run directory; ``inference`` predicts from it.
* ``analysis/``: ``metrics`` (bootstrap CIs, age-bias correction), ``evaluation`` (a run's
  report), ``compare`` (methods and seeds), ``method_tests`` (hierarchical bootstrap of MAE
  differences, Holm), ``crossval``, ``baseline`` (ridge on volumes),
  ``clinical``, ``correlation``, ``cohort`` (what the phantom contains), ``interpret/`` (Grad-RAM).
* ``cohorts/``: ``synthetic/`` (the phantom), ``ixi/`` (registration, QC, import), ``template``.
* ``book/``: ``runspec`` and ``runner`` (papermill batch runs, Jupyter Book), ``workflow``
  (chapter settings, runs on demand), ``plots/``, ``gluing``, ``performance``.
* ``cli`` (the ``brainage`` command), ``bench`` (benchmarks), ``ownership`` (the only module that
  deletes files, and only those brainage recorded), ``fileio`` (atomic writes).
"""

from __future__ import annotations

import warnings

# MONAI imports Optuna when it is installed (brainage tune needs it), and Optuna imports
# tqdm.auto, which warns in Jupyter kernels without ipywidgets. brainage's progress bars are
# plain tqdm and off in notebooks, so the warning would be noise on every page of the book.
warnings.filterwarnings("ignore", message="IProgress not found", module=r"tqdm\.")

__version__ = "0.1.0"
