"""The registration benchmark: the phantom's true map, what ANTs is asked to do, the measurement, the files."""
import json

import numpy as np
import pandas as pd
import pytest

from refacelib.bench import registration as br
from refacelib.bench import throughput
from refacelib.data import phantom
from refacelib.data.template import load_template
from refacelib.imaging import registration as R
from refacelib.pipeline.config import load_profile

#: A registration this far (RMS, mm) from the phantom's pose is wrong, whatever the deformation.
SANE_MM = 5.0


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    params = load_profile("tiny")
    template = load_template(params["deface"]["voxel_mm"], cache_dir=tmp_path_factory.getbasetemp() / "template")
    ph = phantom.PhantomParams.from_dict(params["phantom"])
    assert ph.voxel_mm == params["deface"]["voxel_mm"]  # one template serves both
    basis = phantom.build_basis(template, ph)
    subjects = [br.phantom_subject(i, basis, ph, voxel_mm=ph.voxel_mm) for i in br.benchmark_indices(ph, 2)]
    return {"template": template, "params": ph, "basis": basis, "subjects": subjects, "seed": int(params["seed"])}


def _world(affine, vox):
    return np.asarray(vox, float) @ affine[:3, :3].T + affine[:3, 3]


def test_true_map_inverts_the_generator(setup):
    tpl, basis, ph = setup["template"], setup["basis"], setup["params"]
    lat = phantom.sample_latents(br.benchmark_indices(ph, 1)[0], ph, basis.coupling_matrix)
    out_world = _world(tpl.affine, np.indices(tpl.shape).reshape(3, -1).T)
    # the pose: each output voxel samples the template where pose_affine's inverse puts it
    sampled = _world(tpl.affine, phantom._pose_coords(tpl, lat).T)
    pose = phantom.pose_affine(lat, tpl)
    np.testing.assert_allclose(sampled @ pose[:3, :3].T + pose[:3, 3], out_world, atol=1e-3)
    # pose and deformation: template_positions undoes the generator's backward warp on the head
    head = tpl.head.reshape(-1)
    source = _world(tpl.affine, phantom._source_coords(basis, lat, ph).reshape(3, -1).T[head])
    shown = phantom.template_positions(source, basis, ph, lat)
    # where the warp folds (a few voxels) a point is NaN or shows at another of its places
    found = np.isfinite(shown).all(axis=1)
    off = np.linalg.norm(shown[found] - out_world[head][found], axis=1)
    assert found.mean() > 0.99 and np.mean(off > 0.05) < 0.005 and np.median(off) < 1e-3
    floor = br.deformation_floor(source, shown, pose)
    assert 0.1 < floor["floor_mm"] < SANE_MM  # the deformation is real and no affine reproduces it
    assert floor["resolved"] == pytest.approx(found.mean(), abs=1e-5)


def test_registration_matrix_agrees_with_ants(setup):
    s, tpl = setup["subjects"][0], setup["template"]
    reg = R.register_template(s["image"], s["affine"], tpl, seed=setup["seed"])
    matrix = br.registration_matrix(reg.transform)
    flip = np.array([-1.0, -1.0, 1.0])
    for x in ([0.0, 0.0, 0.0], [40.0, -30.0, 20.0]):  # template point -> subject; ANTs maps it back (LPS)
        w = matrix[:3, :3] @ x + matrix[:3, 3]
        np.testing.assert_allclose(np.asarray(reg.transform.apply_to_point(tuple(w * flip))) * flip, x, atol=1e-4)


def test_schedule_and_rigid_start_reach_ants(setup, monkeypatch):
    import ants

    s, tpl, seed = setup["subjects"][0], setup["template"], setup["seed"]
    calls, original = [], ants.registration

    def spy(**kwargs):
        calls.append(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(ants, "registration", spy)
    book = R.register_template(s["image"], s["affine"], tpl, seed=seed)
    assert [(c["type_of_transform"], c["aff_iterations"], c["aff_shrink_factors"]) for c in calls] == [
        ("Affine", (200, 100, 50, 10), (6, 4, 2, 1))] and "initial_transform" not in calls[0]
    calls.clear()
    short = R.register_template(s["image"], s["affine"], tpl, seed=seed, iterations=(20, 10),
                                shrink_factors=(4, 2), smoothing_sigmas=(2, 1), initial="rigid")
    assert [c["type_of_transform"] for c in calls] == ["Rigid", "Affine"]
    assert calls[1]["aff_iterations"] == (20, 10) and calls[1]["aff_smoothing_sigmas"] == (2, 1)
    assert calls[1]["initial_transform"] and all(isinstance(f, str) for f in calls[1]["initial_transform"])
    assert not np.allclose(book.transform.parameters, short.transform.parameters)
    again = R.register_template(s["image"], s["affine"], tpl, seed=seed)  # the default is reproducible
    np.testing.assert_array_equal(book.transform.parameters, again.transform.parameters)
    with pytest.raises(ValueError, match="initial"):
        R.register_template(s["image"], s["affine"], tpl, initial="similarity")
    with pytest.raises(ValueError, match="one value per level"):
        R.register_template(s["image"], s["affine"], tpl, iterations=(10, 5), shrink_factors=(4, 2, 1))


def test_benchmark_measures_two_settings(setup):
    settings = [br.SETTINGS[0], next(s for s in br.SETTINGS if s.name == "8 mm")]
    table = br.registration_benchmark(setup["subjects"], setup["template"], settings, basis=setup["basis"],
                                      params=setup["params"], seed=setup["seed"])
    assert list(table.columns) == [
        "subject", "site", "setting", "side", "voxel_mm", "iterations", "shrink_factors", "smoothing_sigmas",
        "initial", "seconds", "cpu_seconds", "rms_mm", "max_mm", "pose_rms_mm", "pose_max_mm", "dice",
        "floor_mm", "deform_affine_mm", "resolved", "load_1min"]
    assert len(table) == 2 * 2 * 2 and set(table["site"]) == {"site-A", "site-B"}
    assert list(table["side"][:2]) == ["owner", "attacker"] and (table["seconds"] > 0).all()
    book = table[table["setting"] == "current"]
    assert (book["pose_rms_mm"] < SANE_MM).all(), book
    assert (book["rms_mm"] >= book["floor_mm"] - 1e-3).all()  # no affine beats the floor
    summary = br.registration_summary(table)
    assert summary["chosen"].sum() == 2 and summary.loc[summary["setting"] == "current", "change_mm"].eq(0).all()
    verdict = br.registration_verdict(summary)
    assert verdict["chosen"] in {"current", "8 mm"} and {"change_owner_mm", "change_attacker_mm"} <= set(verdict)


def test_command_writes_results_the_gpu_loader_skips(setup, tmp_path, monkeypatch):
    from refacelib.bench.__main__ import main

    monkeypatch.setattr(br, "load_template", lambda voxel_mm, cache_dir=None: setup["template"])
    assert br.load_registration_results(tmp_path, "tiny") is None
    assert main(["registration", "--profile", "tiny", "--subjects", "1", "--settings", "current", "8 mm",
                 "--out", str(tmp_path)]) == 0
    table, meta = br.load_registration_results(tmp_path, "tiny")
    assert set(table["setting"]) == {"current", "8 mm"} and table["subject"].nunique() == 1
    assert meta["n_subjects"] == 1 and meta["load_before"]["cpus"] >= 1 and "load_15min" in meta["load_after"]
    assert json.loads((tmp_path / "registration-tiny.json").read_text())["profile"] == "tiny"
    assert throughput.load_results(tmp_path) == {}  # not mistaken for a GPU result
    assert main([]) == 2


def test_summary_tolerance_and_reference_accuracy():
    t = pd.DataFrame({"setting": ["current", "current", "fast", "fast"], "side": ["owner", "attacker"] * 2,
                      "seconds": [2.0, 2.0, 1.0, 1.0], "cpu_seconds": [2.0, 2.0, 1.0, 1.0],
                      "rms_mm": [2.0, 2.0, 1.7, 2.3], "max_mm": [4.0] * 4})
    assert br.registration_verdict(br.registration_summary(t))["chosen"] == "current"  # attacker +0.3 mm
    verdict = br.registration_verdict(br.registration_summary(t, tolerance_mm=0.5))
    assert verdict["chosen"] == "fast" and verdict["speedup"] == 2.0 and verdict["change_owner_mm"] == -0.3
    assert verdict["reference_most_accurate"]  # mean 2.0 against fast's 2.0: a tie keeps the reference
