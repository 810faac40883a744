"""Correlations for the clinical analyses: partial Spearman with covariates, and Pearson/Spearman pairs.

* :func:`partial_spearman`: rank correlation of two variables controlling for covariates (ranks
  residualised on the covariates' ranks), with a t-test p-value.
* :func:`correlations`: Pearson and Spearman correlations with p-values, or ``None`` where they
  are undefined (fewer than 3 values, a constant variable).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats as st
import statsmodels.api as sm
from numpy.typing import ArrayLike

__all__ = ["CORRELATION_KEYS", "correlations", "partial_spearman"]

CORRELATION_KEYS = ("pearson_r", "pearson_p", "spearman_rho", "spearman_p")


def partial_spearman(x: ArrayLike, y: ArrayLike, covariates: ArrayLike | None = None) -> tuple[float, float]:
    """Spearman correlation of ``x`` and ``y`` controlling for covariates.

    Every variable is rank-transformed; the ranks of ``x`` and ``y`` are regressed on the ranks of
    the covariates (OLS with intercept) and the residuals correlated (Pearson). The p-value is
    two-sided from Student's t with ``n - 2 - k`` degrees of freedom, ``k`` the number of
    covariates; constant covariate columns are dropped first. Without covariates this is
    :func:`scipy.stats.spearmanr`.

    Args:
        x: first variable.
        y: second variable.
        covariates: array ``[n]`` or ``[n, k]``, numeric (code categories as numbers).

    Returns:
        ``(rho, p)``.

    Raises:
        ValueError: unequal lengths, non-finite values, constant ``x`` or ``y``, or too few
            subjects (``n - 2 - k < 1``).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    covariates = np.empty((n, 0)) if covariates is None else np.asarray(covariates, dtype=float).reshape(n, -1)
    if y.shape != x.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D arrays of equal length; got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(covariates).all()):
        raise ValueError("partial_spearman: drop rows with missing values first")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("partial_spearman: x or y is constant; the correlation is undefined")
    covariates = covariates[:, np.ptp(covariates, axis=0) > 0]
    df = n - 2 - covariates.shape[1]
    if df < 1:
        raise ValueError(f"partial_spearman: {n} subjects are too few for {covariates.shape[1]} covariate(s)")
    design = sm.add_constant(st.rankdata(covariates, axis=0), has_constant="add")
    residual_x = sm.OLS(st.rankdata(x), design).fit().resid
    residual_y = sm.OLS(st.rankdata(y), design).fit().resid
    rho = float(st.pearsonr(residual_x, residual_y).statistic)
    with np.errstate(divide="ignore"):  # |rho| = 1 gives t = inf and p = 0
        t = rho * np.sqrt(df / (1.0 - rho**2))
    return rho, float(2 * st.t.sf(abs(t), df))


def correlations(x: pd.Series, y: pd.Series) -> dict[str, float | None]:
    """Pearson and Spearman correlations with p-values; ``None`` when n < 3 or a variable is constant."""
    result: dict[str, float | None] = {"n": len(x), **dict.fromkeys(CORRELATION_KEYS)}
    if len(x) >= 3 and x.nunique() > 1 and y.nunique() > 1:
        pearson, spearman = st.pearsonr(x, y), st.spearmanr(x, y)
        result.update(
            pearson_r=float(pearson.statistic),
            pearson_p=float(pearson.pvalue),
            spearman_rho=float(spearman.statistic),
            spearman_p=float(spearman.pvalue),
        )
    return result
