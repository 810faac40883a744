"""Where does the model look? Grad-RAM saliency maps for brain-age regression, and their checks.

The package has one module per idea; every public name is re-exported here, so
``from brainage_core.analysis.interpret import explain_run, DEFAULT_LAYER`` works.

* :mod:`~brainage_core.analysis.interpret.gradram`: :class:`GradRAM` (Grad-CAM for a scalar
  regression output, on MONAI's CAM machinery), :func:`saliency_maps`, :func:`randomized_copy`
  and the maths and limits of the maps.
* :mod:`~brainage_core.analysis.interpret.attributions`: :func:`attribution_maps` (gradient x
  input, integrated gradients, occlusion) at the input's resolution.
* :mod:`~brainage_core.analysis.interpret.priors`: the content-free maps a saliency map must
  beat (:func:`central_blob`, :func:`population_prior`, on a layer's grid with
  :func:`layer_grid`) and :func:`deletion_curves` / :func:`deletion_areas`.
* :mod:`~brainage_core.analysis.interpret.benchmark`: :func:`saliency_benchmark`, every map
  against the phantom's age-derivative truth and the trivial baselines, and deletion curves.
* :mod:`~brainage_core.analysis.interpret.regions`: real scans by DLMUSE region: relevance
  shares, relevance against volume, agreement of methods (:func:`region_saliency`).
* :mod:`~brainage_core.analysis.interpret.scoring`: :func:`saliency_in_ground_truth`,
  :func:`randomization_check`, :func:`region_summary`, :func:`map_similarity`.
* :mod:`~brainage_core.analysis.interpret.maps_io`: :func:`save_map_nifti`,
  :func:`load_on_grid`, :func:`group_average_maps`, :func:`age_band_labels`,
  :func:`plot_map_on_template`.
* :mod:`~brainage_core.analysis.interpret.explain`: :func:`explain_run` for a trained run
  directory (NIfTI maps, group averages, figures and ``saliency_scores.json``), and
  :func:`choose_layer`, the target layer chosen on validation scans.
* :mod:`~brainage_core.analysis.interpret.tables`: :func:`ground_truth_table`,
  :func:`randomization_table` and :func:`saliency_values` of several models' ``explain_run``
  results, and :func:`prior_comparison` (each map against every baseline, with intervals).
"""

from __future__ import annotations

from brainage_core.analysis.interpret.attributions import ATTRIBUTION_METHODS, attribution_maps
from brainage_core.analysis.interpret.benchmark import BASELINES, SaliencyBenchmark, saliency_benchmark
from brainage_core.analysis.interpret.explain import choose_layer, explain_run
from brainage_core.analysis.interpret.gradram import (
    DEFAULT_LAYER,
    GradRAM,
    max_abs_normalizer,
    randomized_copy,
    saliency_maps,
)
from brainage_core.analysis.interpret.maps_io import (
    age_band_labels,
    group_average_maps,
    load_on_grid,
    plot_map_on_template,
    save_map_nifti,
)
from brainage_core.analysis.interpret.priors import (
    DELETION_FRACTIONS,
    central_blob,
    deletion_areas,
    deletion_curves,
    layer_grid,
    layer_shape,
    population_prior,
)
from brainage_core.analysis.interpret.regions import (
    AGING_REGIONS,
    RegionSaliency,
    method_agreement,
    region_relevance,
    region_saliency,
    region_values,
    relevance_volume_correlation,
)
from brainage_core.analysis.interpret.scoring import (
    map_similarity,
    randomization_check,
    region_summary,
    saliency_in_ground_truth,
)
from brainage_core.analysis.interpret.tables import (
    benchmark_table,
    benchmark_values,
    ground_truth_table,
    prior_comparison,
    randomization_sentence,
    randomization_table,
    saliency_values,
)

__all__ = [
    "AGING_REGIONS",
    "ATTRIBUTION_METHODS",
    "BASELINES",
    "DEFAULT_LAYER",
    "DELETION_FRACTIONS",
    "GradRAM",
    "RegionSaliency",
    "SaliencyBenchmark",
    "age_band_labels",
    "attribution_maps",
    "benchmark_table",
    "benchmark_values",
    "central_blob",
    "choose_layer",
    "deletion_areas",
    "deletion_curves",
    "explain_run",
    "ground_truth_table",
    "group_average_maps",
    "layer_grid",
    "layer_shape",
    "load_on_grid",
    "map_similarity",
    "max_abs_normalizer",
    "method_agreement",
    "plot_map_on_template",
    "population_prior",
    "prior_comparison",
    "randomization_check",
    "randomization_sentence",
    "randomization_table",
    "randomized_copy",
    "region_relevance",
    "region_saliency",
    "region_summary",
    "region_values",
    "relevance_volume_correlation",
    "saliency_benchmark",
    "saliency_in_ground_truth",
    "saliency_maps",
    "saliency_values",
    "save_map_nifti",
]
