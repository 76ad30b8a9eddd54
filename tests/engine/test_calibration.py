"""Temperature scaling and the expected calibration error on constructed over-confident probabilities."""
from __future__ import annotations

import numpy as np

from napari_cellclass.engine.calibration import (
    calibrate_held_out,
    expected_calibration_error,
    fit_temperature,
    plot_reliability,
    scale_probs,
)


def _overconfident(n=3000, k=24, sharpen=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k))
    z[np.arange(n), y] += 1.5
    z *= sharpen
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_ece_of_perfectly_calibrated_and_of_overconfident_predictions():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.5, 1.0, 20000)
    y = np.where(rng.uniform(size=conf.size) < conf, 0, 1)  # right exactly as often as claimed
    p = np.stack([conf, 1 - conf], 1)
    assert expected_calibration_error(p, y) < 0.02
    p2, y2 = _overconfident()
    assert expected_calibration_error(p2, y2) > 0.1


def test_temperature_fitted_on_some_groups_calibrates_the_others_and_keeps_every_argmax():
    p, y = _overconfident()
    t = fit_temperature(np.log(p), y)
    assert t > 1.5  # over-confident logits are softened
    assert np.array_equal(scale_probs(p, t).argmax(1), p.argmax(1))
    cal = calibrate_held_out(p, y, [f"spread{i % 12}" for i in range(len(y))])
    assert cal.n_fit + cal.n_test == len(y) and cal.n_fit and cal.n_test
    assert cal.ece_before > 0.1 and cal.ece_after < 0.05


def test_reliability_plot_is_written(tmp_path):
    p, y = _overconfident(n=500)
    out = plot_reliability({"raw": (p, y), "scaled": (scale_probs(p, 2.0), y)}, tmp_path / "rel.png", "test")
    assert out.stat().st_size > 5000
