"""The DP accountant: dp-accounting's own numbers, the events each sampling scheme maps to,
calibration, affordable rounds, bad input, and the silenced absl warnings."""

from __future__ import annotations

import logging
import math

import dp_accounting
import pytest
from dp_accounting import pld, rdp

from fedpeft.errors import ConfigError
from fedpeft.privacy.accountant import (
    RoundPrivacy,
    calibrate_local_sigma,
    calibrate_noise_multiplier,
    epsilon,
    quiet_accountant,
    rounds_affordable,
)

NR = dp_accounting.NeighboringRelation
DELTA = 1e-5


def fixed(z: float, n: int = 200, k: int = 20) -> RoundPrivacy:
    return RoundPrivacy(z, "fixed", n, k)


def poisson(z: float, n: int = 200, k: int = 20) -> RoundPrivacy:
    return RoundPrivacy(z, "poisson", n, k)


def own_answer(
    event: dp_accounting.DpEvent, relation: dp_accounting.NeighboringRelation, accountant: str
) -> float:
    acc = (
        rdp.RdpAccountant(neighboring_relation=relation)
        if accountant == "rdp"
        else pld.PLDAccountant(neighboring_relation=relation)
    )
    with quiet_accountant():
        return float(acc.compose(event).get_epsilon(DELTA))


# ---- the events ------------------------------------------------------------------------


def test_poisson_round_is_a_poisson_sampled_gaussian() -> None:
    assert poisson(1.3).event() == dp_accounting.PoissonSampledDpEvent(
        0.1, dp_accounting.GaussianDpEvent(1.3)
    )
    assert poisson(1.3).relation is NR.ADD_OR_REMOVE_ONE


def test_fixed_round_carries_half_z_because_replace_one_moves_the_sum_by_2c() -> None:
    assert fixed(2.0).event() == dp_accounting.SampledWithoutReplacementDpEvent(
        200, 20, dp_accounting.GaussianDpEvent(1.0)
    )
    assert fixed(2.0).relation is NR.REPLACE_ONE


def test_halving_is_needed_rdp_without_it_would_undercut_the_tight_pld_value() -> None:
    # With k = n nothing is sampled: the release is the Gaussian mechanism under
    # REPLACE_ONE, whose tight ε (PLD) dp-accounting computes with sensitivity 2C.
    z = 1.0
    tight = own_answer(dp_accounting.GaussianDpEvent(z), NR.REPLACE_ONE, "pld")
    unhalved = own_answer(
        dp_accounting.SampledWithoutReplacementDpEvent(20, 20, dp_accounting.GaussianDpEvent(z)),
        NR.REPLACE_ONE,
        "rdp",
    )
    ours = epsilon([fixed(z, 20, 20)], DELTA)
    assert unhalved < tight  # an RDP bound below the tight value would be an under-count
    assert ours >= tight
    assert (round(unhalved, 2), round(tight, 1)) == (4.73, 10.0)  # quoted in docs/privacy.md


# ---- reference values (the issue's, from dp-accounting's RDP accountant) -----------------


@pytest.mark.parametrize(("rounds", "expected"), [(1, 2.28), (2, 2.77), (3, 3.02)])
def test_fixed_20_of_200_reference(rounds: int, expected: float) -> None:
    # The "z = 1.0" is the GaussianDpEvent's multiplier: z = 2.0 on the clip norm.
    assert round(epsilon([fixed(2.0)] * rounds, DELTA), 2) == expected


@pytest.mark.parametrize(("rounds", "expected"), [(1, 2.13), (5, 2.90), (10, 3.44)])
def test_poisson_q01_reference(rounds: int, expected: float) -> None:
    assert round(epsilon([poisson(1.0)] * rounds, DELTA), 2) == expected


def test_docs_table_values() -> None:
    # docs/privacy.md quotes these beside the reference values
    assert round(epsilon([fixed(1.0)], DELTA), 2) == 7.70
    assert round(epsilon([poisson(1.0)], DELTA, "pld"), 2) == 1.68


@pytest.mark.parametrize(
    ("rounds", "accountant"),
    [
        ([poisson(1.0)] * 4, "rdp"),
        ([poisson(3.0), poisson(2.0), poisson(3.0)], "rdp"),
        ([poisson(3.0), poisson(2.0), poisson(3.0)], "pld"),
        ([fixed(2.0), fixed(3.0)], "rdp"),
    ],
)
def test_epsilon_equals_dp_accountings_own_answer(
    rounds: list[RoundPrivacy], accountant: str
) -> None:
    acc_events = dp_accounting.ComposedDpEvent([r.event() for r in rounds])
    assert epsilon(rounds, DELTA, accountant) == pytest.approx(
        own_answer(acc_events, rounds[0].relation, accountant), rel=1e-9
    )


def test_no_rounds_spend_nothing() -> None:
    assert epsilon([], DELTA) == 0.0


# ---- the distributed discrete Gaussian ----------------------------------------------------


def kls_rho(sigma: float, n: int, l2: float, l1: float, d: int) -> float:
    """Kairouz-Liu-Steinke 2021 Prop. 14 / Eq. 17, written out independently."""
    tau = 10 * sum(math.exp(-2 * math.pi**2 * sigma**2 * k / (k + 1)) for k in range(1, n))
    a = l2 / (math.sqrt(n) * sigma)
    b = l1 / (math.sqrt(n) * sigma)
    return 0.5 * min(a**2 + 2 * b * tau + tau**2 * d, (a + math.sqrt(d) * tau) ** 2)


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_discrete_round_is_the_kls_zcdp_bound(sampling: str) -> None:
    # sigma = 0.6 makes tau visible (~5e-3 per term); sensitivities double under replace-one
    r = RoundPrivacy.distributed(
        local_sigma=0.6,
        noisy_clients=8,
        l2_bound=3.0,
        l1_bound=7.0,
        dimension=50,
        sampling=sampling,
        population=100,
        sample_size=10,
    )
    factor = 2.0 if sampling == "fixed" else 1.0
    expected = kls_rho(0.6, 8, factor * 3.0, factor * 7.0, 50)
    assert r.event() == dp_accounting.ZCDpEvent(pytest.approx(expected, rel=1e-12))
    assert expected > 0.5 * (factor * 3.0 / (math.sqrt(8) * 0.6)) ** 2  # tau adds something


def test_discrete_with_large_sigma_matches_the_continuous_gaussian_zcdp() -> None:
    r = RoundPrivacy.distributed(
        local_sigma=400.0,
        noisy_clients=18,
        l2_bound=1000.0,
        dimension=100_000,
        sampling="poisson",
        population=200,
        sample_size=20,
    )
    assert r.zcdp_rho() == pytest.approx(1 / (2 * r.noise_multiplier**2), rel=1e-9)
    # no amplification by sampling for zCDP events: never below the sampled Gaussian
    assert epsilon([r] * 3, DELTA) > epsilon([poisson(r.noise_multiplier)] * 3, DELTA)


def test_discrete_round_checks_its_fields() -> None:
    with pytest.raises(ConfigError, match=r"dp\.local_sigma"):
        RoundPrivacy.distributed(
            local_sigma=0.4,
            noisy_clients=5,
            l2_bound=1.0,
            dimension=3,
            sampling="fixed",
            population=10,
            sample_size=5,
        )
    with pytest.raises(ConfigError, match=r"dp\.local_sigma"):
        RoundPrivacy(1.0, "fixed", 10, 5, mechanism="discrete_gaussian")


def test_calibrate_local_sigma_meets_the_target() -> None:
    sigma = calibrate_local_sigma(
        8.0,
        DELTA,
        3,
        sampling="fixed",
        population=200,
        sample_size=20,
        noisy_clients=18,
        l2_bound=1000.0,
        dimension=100_000,
    )
    r = RoundPrivacy.distributed(
        local_sigma=sigma,
        noisy_clients=18,
        l2_bound=1000.0,
        dimension=100_000,
        sampling="fixed",
        population=200,
        sample_size=20,
    )
    assert 7.9 < epsilon([r] * 3, DELTA) <= 8.0


# ---- accountants that dp-accounting cannot serve ----------------------------------------


def test_pld_refuses_fixed_sampling_and_discrete_rounds() -> None:
    with pytest.raises(ConfigError, match=r"dp\.accountant"):
        epsilon([fixed(2.0)], DELTA, "pld")
    r = RoundPrivacy.distributed(
        local_sigma=5.0,
        noisy_clients=5,
        l2_bound=10.0,
        dimension=3,
        sampling="poisson",
        population=100,
        sample_size=10,
    )
    with pytest.raises(ConfigError, match=r"dp\.accountant"):
        epsilon([r], DELTA, "pld")
    with pytest.raises(ConfigError, match=r"dp\.accountant"):
        epsilon([poisson(1.0)], DELTA, "moments")


def test_mixed_sampling_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"federation\.sampling"):
        epsilon([fixed(2.0), poisson(2.0)], DELTA)


# ---- calibration and the budget ----------------------------------------------------------


def test_calibration_meets_the_target_and_is_near_minimal() -> None:
    z = calibrate_noise_multiplier(
        3.0, DELTA, 10, sampling="poisson", population=200, sample_size=20
    )
    assert epsilon([poisson(z)] * 10, DELTA) <= 3.0
    assert epsilon([poisson(z - 0.003)] * 10, DELTA) > 3.0


def test_impossible_target_is_refused_with_the_numbers() -> None:
    with pytest.raises(ConfigError, match=r"dp\.epsilon") as err:
        calibrate_noise_multiplier(
            0.05, DELTA, 5000, sampling="poisson", population=200, sample_size=20
        )
    message = str(err.value)
    assert "5000 rounds" in message and "noise multiplier 100" in message
    assert "0.05" in message and "spends epsilon = " in message


@pytest.mark.parametrize(
    ("z", "sampling", "target", "expected"),
    [
        (1.0, "poisson", 3.0, 5),  # 2.90 after 5 rounds, 3.0x after 6
        (2.0, "fixed", 3.0, 2),  # 2.77 after 2, 3.02 after 3: the example
        (1.0, "fixed", 3.0, 0),  # one round already spends 7.7
    ],
)
def test_rounds_affordable_is_consistent_with_epsilon(
    z: float, sampling: str, target: float, expected: int
) -> None:
    one = RoundPrivacy(z, sampling, 200, 20)
    n = rounds_affordable(z, target, DELTA, sampling=sampling, population=200, sample_size=20)
    assert n == expected
    if n:
        assert epsilon([one] * n, DELTA) <= target
    assert epsilon([one] * (n + 1), DELTA) > target


def test_rounds_affordable_stops_at_max_rounds() -> None:
    n = rounds_affordable(
        50.0, 10.0, DELTA, sampling="poisson", population=200, sample_size=20, max_rounds=37
    )
    assert n == 37


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"target_epsilon": 0.0}, "dp.epsilon"),
        ({"target_epsilon": -1.0}, "dp.epsilon"),
        ({"delta": 0.0}, "dp.delta"),
        ({"delta": 0.005}, "dp.delta"),  # >= 1/200 clients
        ({"sampling": "stratified"}, "federation.sampling"),
        ({"sample_size": 201}, "federation.clients_per_round"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict, field: str) -> None:
    args = {
        "target_epsilon": 4.0,
        "delta": DELTA,
        "rounds": 3,
        "sampling": "poisson",
        "population": 200,
        "sample_size": 20,
    } | kwargs
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        calibrate_noise_multiplier(
            args.pop("target_epsilon"), args.pop("delta"), args.pop("rounds"), **args
        )


@pytest.mark.parametrize("z", [0.0, -1.0, math.nan, math.inf])
def test_non_positive_noise_multiplier_is_refused(z: float) -> None:
    with pytest.raises(ConfigError, match=r"dp\.noise_multiplier"):
        poisson(z)


def test_round_privacy_round_trips_through_a_dict() -> None:
    rounds = [
        fixed(2.0),
        RoundPrivacy.distributed(
            local_sigma=3.5,
            noisy_clients=9,
            l2_bound=40.0,
            dimension=1000,
            sampling="fixed",
            population=100,
            sample_size=10,
        ),
    ]
    for r in rounds:
        assert RoundPrivacy.from_dict(r.to_dict()) == r
    with pytest.raises(ConfigError, match="unknown"):
        RoundPrivacy.from_dict(rounds[0].to_dict() | {"colour": "red"})


# ---- absl warnings -----------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_convergence_warnings_are_silenced_in_scope_only() -> None:
    absl = logging.getLogger("absl")
    seen = _Collect()
    absl.addHandler(seen)
    try:
        # Unfiltered, the RDP accountant warns at small z (so the test below means something).
        raw = rdp.RdpAccountant()
        raw.compose(poisson(0.5).event()).get_epsilon(DELTA)
        assert any("failed to converge" in m for m in seen.messages)
        seen.messages.clear()

        epsilon([poisson(0.5)] * 3, DELTA)
        calibrate_noise_multiplier(
            20.0, DELTA, 2, sampling="poisson", population=200, sample_size=20
        )
        assert seen.messages == []
        with quiet_accountant() as filt:
            rdp.RdpAccountant().compose(poisson(0.5).event()).get_epsilon(DELTA)
            absl.warning("something else")
        assert filt.dropped > 0
        assert seen.messages == ["something else"]  # other absl messages still pass
        assert not absl.filters  # the filter is gone after the block
    finally:
        absl.removeHandler(seen)
