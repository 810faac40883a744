"""The RNC chapter's experiments and figures (brainage_core.analysis.rnc_toy, brainage_core.book.plots.rnc_toy)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from sklearn.linear_model import LinearRegression

from brainage_core.analysis.rnc_toy import fast_vs_loop_agreement, linear_readout_r2
from brainage_core.book.plots import rnc_toy


def test_linear_readout_r2_is_one_for_linear_ages_and_matches_least_squares() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    assert linear_readout_r2(features, 2 * features[:, 0] - features[:, 2] + 40) == pytest.approx(1.0)
    ages = features[:, 0] + rng.normal(size=50)
    expected = LinearRegression().fit(features, ages).score(features, ages)
    assert linear_readout_r2(features, ages) == pytest.approx(expected)
    assert 0.2 < expected < 0.8
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        linear_readout_r2(features, ages[:-1])


def test_fast_and_loop_rnc_agree_in_value_and_gradient() -> None:
    check = fast_vs_loop_agreement(views=(2, 3), batch_size=12, dim=4, generator=torch.Generator().manual_seed(0))
    assert check["views"].tolist() == [2, 3]
    assert (check["value rel. diff"] < 1e-10).all() and (check["max grad diff"] < 1e-10).all()
    again = fast_vs_loop_agreement(views=(2, 3), batch_size=12, dim=4, generator=torch.Generator().manual_seed(0))
    assert again.equals(check)  # the generator fixes features and ages
    with pytest.raises(ValueError, match="at least 2 views"):
        fast_vs_loop_agreement(views=(1,))


def test_toy_figures_have_a_panel_per_space_or_encoder() -> None:
    ages = torch.linspace(20, 90, 10)
    spaces = {name: torch.randn(10, 2, 2) for name in ("ranking", "binned", "collapsed")}
    figure = rnc_toy.plot_feature_spaces(spaces, ages, {name: 3.0 for name in spaces})
    assert isinstance(figure, Figure) and len(figure.axes) == 4  # three spaces and the age colour bar
    assert figure.axes[0].get_title() == "ranking: RNC loss 3.000"
    features = {"RNC": np.random.default_rng(0).normal(size=(10, 8)), "NT-Xent": np.eye(10, 8)}
    figure = rnc_toy.plot_encoder_features(features, ages.numpy(), {"RNC": 0.9, "NT-Xent": 0.5})
    assert isinstance(figure, Figure) and len(figure.axes) == 2
    assert figure.axes[1].get_title() == "NT-Xent: linear read-out R² = 0.50"
    plt.close("all")
