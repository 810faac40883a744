"""Analyses of run directories: metrics and age-bias correction, clinical statistics, method comparisons, cross-validation, baselines and saliency."""
