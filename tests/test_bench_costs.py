"""Cost curves: the fit recovers known costs, the projection scales as documented, a tiny real measurement."""
import json

import numpy as np
import pandas as pd
import pytest

from refacelib.bench import costs
from refacelib.bench import throughput

PAPER = {"n_train": 180, "n_val": 20, "n_test_internal": 15, "n_test_external": 469}


def _synthetic(stages, sizes, rng, noise=0.0):
    """Measured rows of known costs: ``(stage, unit, parallel, cores, a, b)`` at cohorts scaled from PAPER."""
    rows = []
    for n in sizes:
        units = costs.stage_units(costs.scaled_splits(n, PAPER))
        for stage, unit, parallel, cores, a, b in stages:
            seconds = a + b * units[unit]
            rows.append({"stage": stage, "unit": unit, "units": units[unit], "parallel": parallel, "cores": cores,
                         "seconds": seconds * (1 + noise * rng.standard_normal()), "quadratic_seconds": 0.0,
                         "pair_core_seconds": 0.0, "n_subjects": n})
    return pd.DataFrame(rows)


def test_scaled_splits_keep_the_reference_mix_and_the_minimums():
    for n in (4, 7, 10, 33, 100):
        splits = costs.scaled_splits(n, PAPER)
        assert sum(splits.values()) == n and splits["n_train"] >= 2 and splits["n_test_external"] >= 2
    # half the paper: 7.5 internal and 234.5 external test subjects; the tie goes to the first split
    assert costs.scaled_splits(342, PAPER) == {"n_train": 90, "n_val": 10, "n_test_internal": 8,
                                               "n_test_external": 234}
    assert costs.scaled_splits(684, PAPER) == PAPER
    with pytest.raises(ValueError):
        costs.scaled_splits(3, PAPER)


def test_fit_recovers_the_fixed_and_per_unit_costs(rng):
    stages = [("defacing", "subjects", True, 2, 30.0, 4.0), ("face evaluation", "test subjects", True, 2, 5.0, 2.5)]
    fit = costs.fit_costs(_synthetic(stages, [8, 16, 32, 64], rng)).set_index("stage")
    for stage, _, _, _, a, b in stages:
        assert fit.loc[stage, "a_s"] == pytest.approx(a, abs=1e-6)
        assert fit.loc[stage, "b_s"] == pytest.approx(b, rel=1e-9)
        assert fit.loc[stage, "r2"] == pytest.approx(1.0)
    noisy = costs.fit_costs(_synthetic(stages, [8, 16, 32, 64, 128], rng, noise=0.02)).set_index("stage")
    assert noisy.loc["defacing", "b_s"] == pytest.approx(4.0, rel=0.1)


def test_log_log_exponent_tells_linear_from_quadratic_growth():
    n = np.array([10, 20, 40, 80])
    linear = pd.DataFrame({"stage": "lin", "unit": "subjects", "units": n, "seconds": 3.0 * n, "cores": 1})
    square = pd.DataFrame({"stage": "sq", "unit": "subjects", "units": n, "seconds": 0.1 * n ** 2, "cores": 1})
    fit = costs.fit_costs(pd.concat([linear, square])).set_index("stage")["loglog_exponent"]
    assert fit["lin"] == pytest.approx(1.0) and fit["sq"] == pytest.approx(2.0)


def test_no_negative_fixed_cost_from_noise():
    m = pd.DataFrame({"stage": "x", "unit": "subjects", "units": [4, 8, 16], "seconds": [3.0, 9.0, 21.0], "cores": 2})
    f = costs.fit_costs(m).iloc[0]  # unconstrained least squares would give a = -1
    assert f["a_s"] >= 0 and f["b_s"] > 0


def test_projection_divides_the_per_subject_part_among_cores_and_keeps_the_serial_part():
    fit = pd.DataFrame({"stage": ["defacing", "phantom generation", "matching attack", "fixed only"],
                        "unit": ["subjects", "subjects", "test subjects", "subjects"],
                        "parallel": [True, False, True, True], "cores": [2, 1, 2, 2],
                        "a_s": [50.0, 3.0, 10.0, 7.0], "b_s": [6.0, 0.5, 1.0, 0.0],
                        "pair_core_s": [0.0, 0.0, 0.02, 0.0]})
    units = costs.stage_units(PAPER)
    p = costs.project_costs(fit, units, cores=(2, 16)).pivot(index="stage", columns="cores", values="seconds")
    assert p.loc["defacing", 2] == pytest.approx(50 + 6 * 684, abs=0.1)  # as measured
    assert p.loc["defacing", 16] == pytest.approx(50 + 6 * 684 * 2 / 16, abs=0.1)
    assert p.loc["defacing", 16] < p.loc["defacing", 2]
    assert p.loc["phantom generation", 16] == p.loc["phantom generation", 2]  # serial stage
    assert p.loc["fixed only", 16] == p.loc["fixed only", 2] == 7.0  # the fixed part does not shrink
    pairs = 0.02 * units["subject pairs"]
    assert p.loc["matching attack", 2] == pytest.approx(10 + 484 + pairs / 2, abs=0.1)
    assert p.loc["matching attack", 16] == pytest.approx(10 + 484 / 8 + pairs / 16, abs=0.1)
    assert p.loc["total", 16] == pytest.approx(p.drop("total")[16].sum(), abs=0.5)


def test_gpu_setting_replaces_the_network_stage_only():
    fit = pd.DataFrame({"stage": ["defacing", "refacing (networks)"], "unit": ["subjects", "test subjects"],
                        "parallel": [True, False], "cores": [2, 1], "a_s": [0.0, 0.0], "b_s": [1.0, 100.0],
                        "pair_core_s": 0.0})
    paper = {"deface": {"methods": ["a"] * 5}, "cascade": {"n_samples": 8, "sample_steps": 50}}
    seconds = costs.gpu_network_seconds(0.004, paper, 484)
    assert seconds == pytest.approx(484 * 5 * 8 * 101 * 0.004)
    gpu = {"label": "H200 + 16 cores", "cores": 16, "stage": "refacing (networks)", "seconds": seconds, "basis": "x"}
    p = costs.project_costs(fit, costs.stage_units(PAPER), cores=(2, 16), gpu=gpu).set_index(["setting", "stage"])
    assert p.loc[("H200 + 16 cores", "refacing (networks)"), "seconds"] == pytest.approx(seconds, abs=0.1)
    assert p.loc[("H200 + 16 cores", "defacing"), "seconds"] == p.loc[("16 cores", "defacing"), "seconds"]
    assert p.loc[("16 cores", "refacing (networks)"), "seconds"] == p.loc[("2 cores", "refacing (networks)"), "seconds"]


def test_cost_records_round_trip_and_stay_out_of_the_gpu_results(tmp_path):
    measured = pd.DataFrame({"stage": ["defacing"], "seconds": [1.0]})
    costs.write_costs(tmp_path, measured, {"profile": "tiny", "sizes": [4]})
    loaded, meta = costs.load_costs(tmp_path, "tiny")
    assert loaded.equals(measured) and meta["kind"] == "costs" and meta["sizes"] == [4]
    assert costs.load_costs(tmp_path, "quick") is None
    assert throughput.load_results(tmp_path) == {}


def test_shipped_measurement_fits_and_projects():
    """The CSV the appendix shows (when shipped): every stage at every size, a projection for the paper."""
    from refacelib.pipeline.config import load_profile, project_root

    loaded = costs.load_costs(project_root() / "bench" / "results", "quick")
    if loaded is None:
        pytest.skip("no bench/results/costs-quick.csv shipped")
    measured, meta = loaded
    assert set(measured["stage"]) == {s for s, _, _ in costs.STAGES}
    assert sorted(measured["n_subjects"].unique()) == sorted(meta["sizes"])
    fit = costs.fit_costs(measured)
    p = costs.project_costs(fit, costs.stage_units(load_profile("paper")["phantom"]), cores=(meta["n_jobs"], 16))
    total = p[p["stage"] == "total"].set_index("cores")["seconds"]
    assert total[16] < total[meta["n_jobs"]]


def test_a_tiny_measurement_times_every_stage(tmp_path, monkeypatch):
    """Four tiny subjects (2 training, 2 test), one method, one sample of one step: every stage, positive times."""
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path))
    overrides = {"deface.methods": ["mri_deface"], "cascade.n_samples": 1, "cascade.sample_steps": 1}
    reference = {"n_train": 1, "n_val": 0, "n_test_internal": 0, "n_test_external": 1}
    measured, meta = costs.measure_costs("tiny", [4], n_jobs=1, reference=reference, overrides=overrides)
    assert list(measured["stage"]) == [s for s, _, _ in costs.STAGES]
    for col in ("unit", "units", "parallel", "seconds", "cores", "n_subjects", "n_test", "n_pairs",
                "pair_core_seconds", "quadratic_seconds", "load1_before", "load1_after", "cpu_count"):
        assert col in measured, col
    assert (measured["seconds"] > 0).all(), measured[["stage", "seconds"]]
    assert measured.set_index("stage").loc["defacing", "units"] == 4
    assert measured.set_index("stage").loc["face evaluation", "units"] == 2
    attack = measured.set_index("stage").loc["matching attack"]
    assert attack["pair_core_seconds"] > 0 and attack["n_pairs"] == 4
    assert meta["splits"]["4"] == {"n_train": 2, "n_val": 0, "n_test_internal": 0, "n_test_external": 2}
    assert len(meta["loadavg_before"]) == 3 and meta["cpu_count"] >= 1
    assert not any(p.name.startswith("tiny-phantom-costs") for p in tmp_path.iterdir())  # removed unless keep
    json.dumps(meta)  # the record is JSON


def test_function_clock_counts_nested_calls_once_and_restores():
    """The refacing split times outermost calls only (build_examples inside linear_models is not counted twice)."""
    import time
    from types import SimpleNamespace

    mod = SimpleNamespace()
    mod.inner = lambda: time.sleep(0.05)
    mod.outer = lambda: (mod.inner(), time.sleep(0.05))
    original = mod.inner
    clock = costs._FunctionClock([(mod, "inner"), (mod, "outer")])
    mod.outer()
    mod.inner()
    clock.close()
    assert 0.15 <= clock.seconds < 0.25 and mod.inner is original
