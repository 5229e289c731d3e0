"""Adaptive clipping (Andrew et al. 2021): the noise split, the geometric update, its
noise, convergence to the target quantile, and checkpointing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpeft.errors import ConfigError
from fedpeft.privacy.clipping import AdaptiveClip, default_count_noise_std, split_noise_multiplier


@pytest.mark.parametrize(("z", "sigma_b"), [(1.0, 5.0), (0.7, 1.0), (3.0, 10.0)])
def test_split_recombines_to_the_total(z: float, sigma_b: float) -> None:
    z_update = split_noise_multiplier(z, sigma_b)
    assert z_update > z
    assert (z_update**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)


def test_split_refuses_a_count_that_spends_the_whole_budget() -> None:
    with pytest.raises(ConfigError, match=r"dp\.adaptive_clip\.count_noise_std") as err:
        split_noise_multiplier(4.0, 2.0)  # 2 * sigma_b = 4 = z: nothing left for the update
    assert "4" in str(err.value)
    with pytest.raises(ConfigError, match=r"dp\.noise_multiplier"):
        split_noise_multiplier(0.0, 2.0)


def no_noise_clip(**kw: float) -> AdaptiveClip:
    return AdaptiveClip(1.0, count_noise_std=1e-12, **kw)


def test_all_clipped_grows_the_clip_geometrically() -> None:
    clip = no_noise_clip(target_quantile=0.5, lr=0.2)
    new = clip.update(10, 10, np.random.default_rng(0))
    assert new == pytest.approx(math.exp(0.2 * 0.5))
    assert clip.last_unclipped_fraction == pytest.approx(0.0)


def test_none_clipped_shrinks_it() -> None:
    clip = no_noise_clip(target_quantile=0.8, lr=0.5)
    new = clip.update(0, 10, np.random.default_rng(0))
    assert new == pytest.approx(math.exp(-0.5 * (1.0 - 0.8)))


def test_count_noise_has_the_configured_std() -> None:
    clip = AdaptiveClip(1.0, lr=1e-9, count_noise_std=3.0)
    rng = np.random.default_rng(7)
    fractions: list[float] = []
    for _ in range(4000):
        clip.update(5, 10, rng, denominator=10.0)
        assert clip.last_unclipped_fraction is not None
        fractions.append(clip.last_unclipped_fraction)
    # b̃ = (Σ(b − ½) + N(0, σ_b²)) / m + ½ with Σ(b − ½) = 0 here
    assert np.mean(fractions) == pytest.approx(0.5, abs=5 * 0.3 / math.sqrt(4000))
    assert np.std(fractions) == pytest.approx(3.0 / 10.0, rel=0.05)


def test_converges_to_the_target_quantile_of_the_norms() -> None:
    rng = np.random.default_rng(3)
    m = 100
    clip = AdaptiveClip(0.05, target_quantile=0.5, lr=0.2, expected_clients=m)
    assert clip.count_noise_std == default_count_noise_std(m) == 5.0
    for _ in range(300):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=m)  # median 1.0
        clip.update(int((norms > clip.clip).sum()), m, rng)
    assert clip.clip == pytest.approx(1.0, rel=0.15)


def test_state_round_trips_and_privacy_parameters_cannot_change() -> None:
    a = AdaptiveClip(2.0, count_noise_std=4.0)
    a.update(3, 10, np.random.default_rng(0))
    b = AdaptiveClip(2.0, count_noise_std=4.0)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    c = AdaptiveClip(2.0, count_noise_std=5.0)
    with pytest.raises(ConfigError, match="count_noise_std"):
        c.load_state_dict(a.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial": 0.0}, r"dp\.clip"),
        ({"target_quantile": 1.0}, "target_quantile"),
        ({"lr": 0.0}, r"adaptive_clip\.lr"),
        ({"count_noise_std": None}, "count_noise_std"),
        ({"count_noise_std": -1.0}, "count_noise_std"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    args = {"initial": 1.0, "count_noise_std": 1.0} | kwargs
    with pytest.raises(ConfigError, match=field):
        AdaptiveClip(**args)


def test_update_checks_its_counts() -> None:
    clip = AdaptiveClip(1.0, count_noise_std=1.0)
    with pytest.raises(ValueError, match="outside"):
        clip.update(11, 10, np.random.default_rng(0))
