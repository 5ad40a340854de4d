"""Profiles, dataset labels and run folders."""
import pytest
import yaml

from refacelib.pipeline import config


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


def test_profiles_exist_and_load():
    assert {"tiny", "quick", "paper"} <= set(config.list_profiles())
    for name in ("tiny", "quick", "paper"):
        assert "phantom" in config.load_profile(name)


def test_unknown_profile_is_a_clear_error(runs):
    with pytest.raises(config.ConfigError, match="unknown PROFILE 'huge'.*tiny"):
        config.open_run("huge", "phantom")


def test_missing_dataset_folder_is_a_clear_error(runs, tmp_path):
    with pytest.raises(config.ConfigError, match="DATASET folder does not exist"):
        config.open_run("tiny", str(tmp_path / "nowhere"))


def test_run_folder_and_resolved_params(runs):
    run = config.open_run("tiny", "phantom")
    assert run.folder == runs / "tiny-phantom"
    saved = yaml.safe_load((run.folder / "inputs" / "params.yaml").read_text())
    assert saved["profile"] == "tiny" and saved["params"] == config.load_profile("tiny")


def test_two_datasets_with_the_same_name_get_two_folders(runs, tmp_path):
    a, b = tmp_path / "x" / "bids", tmp_path / "y" / "bids"
    a.mkdir(parents=True), b.mkdir(parents=True)
    fa, fb = config.open_run("tiny", str(a)).folder, config.open_run("tiny", str(b)).folder
    assert fa != fb and fa.parent == fb.parent == runs


def test_relpath_never_shows_absolute_paths(runs):
    run = config.open_run("tiny", "phantom")
    shown = run.relpath(run.folder / "tables" / "x.csv")
    assert shown == "runs/tiny-phantom/tables/x.csv"


def test_stable_hash_changes_with_values():
    assert config.stable_hash({"a": 1}) != config.stable_hash({"a": 2})


# --------------------------------------------------------------------------- profile schema
def test_every_shipped_profile_validates():
    for name in config.list_profiles():
        params = config.load_profile(name)
        assert config.validate_params(params, source=name) is params


@pytest.fixture
def project(tmp_path, monkeypatch, runs):
    """A project root whose params/ holds tiny.yaml; a test edits a copy as params/bad.yaml."""
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "tiny.yaml").write_text((config.project_root() / "params" / "tiny.yaml").read_text())
    monkeypatch.setenv("REFACE_PROJECT_ROOT", str(tmp_path))
    return tmp_path


def _bad_profile(project, edit):
    params = yaml.safe_load((project / "params" / "tiny.yaml").read_text())
    edit(params)
    (project / "params" / "bad.yaml").write_text(yaml.safe_dump(params))


def _set(dotted, value):
    def edit(params):
        *parents, last = dotted.split(".")
        node = params
        for part in parents:
            node = node[part]
        node[last] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(cohrt=p.pop("cohort")), r"cohrt: unknown key \(did you mean 'cohort'\?\)\n  cohort: missing"),
    (_set("phantom.voxel_mm", "four"), r"phantom\.voxel_mm: must be a number > 0, got 'four'"),
    (_set("phantom", [1, 2]), r"phantom: must be a mapping, got \[1, 2\]"),
    (_set("phantom.n_trian", 3), r"phantom\.n_trian: unknown key \(did you mean 'n_train'\?\)"),
    (_set("cascade.stage1.lr", -1.0), r"cascade\.stage1\.lr: must be a number > 0, got -1\.0"),
    (_set("cascade.stage2.lr", "5e-4"), r"cascade\.stage2\.lr: must be a number > 0, got '5e-4'"),
    (_set("cascade.stage1.channels", [4, "8"]), r"cascade\.stage1\.channels\[1\]: must be an integer >= 1"),
    (_set("cascade.sampler", "ddpn"), r"cascade\.sampler: must be one of 'ddim', 'ddpm', got 'ddpn'"),
    (_set("cascade.max_seconds_per_stage", 0), r"cascade\.max_seconds_per_stage: must be a number > 0 or null"),
    (_set("deface.methods", ["pydefce"]), r"deface\.methods\[0\]: must be one of 'fsl_deface'"),
    (_set("muscle.n_splits", True), r"muscle\.n_splits: must be an integer >= 2, got True"),
    (_set("phantom.face_coupling", 1.5), r"phantom\.face_coupling: must be a number in \[0, 1\], got 1\.5"),
    (_set("reid", None), r"reid: must be a mapping, got null"),
], ids=["typo-section", "voxel-str", "phantom-list", "typo-key", "lr-negative", "lr-string", "channel-str",
        "sampler", "budget-zero", "method", "bool-int", "coupling-range", "empty-section"])
def test_invalid_profile_names_the_dotted_key(project, runs, edit, message):
    _bad_profile(project, edit)
    with pytest.raises(config.ConfigError, match=r"^params/bad\.yaml: \d+ invalid parameter\(s\):\n(.|\n)*" + message):
        config.load_profile("bad")
    with pytest.raises(config.ConfigError, match=message):
        config.open_run("bad", "phantom")
    assert not runs.exists()  # refused before any work


@pytest.mark.parametrize("overrides, message", [
    ({"phantom.face_coupling": 1.5}, r"with overrides .*:\n  phantom\.face_coupling: must be a number in \[0, 1\]"),
    ({"phantom.face_coupilng": 0.0}, r"phantom\.face_coupilng: unknown key \(did you mean 'face_coupling'\?\)"),
    ({"cascade.stage1.lr": "fast"}, r"cascade\.stage1\.lr: must be a number > 0, got 'fast'"),
    ({"cascade..lr": 1.0}, r"override 'cascade\.\.lr': must be a dotted key"),
])
def test_overrides_are_validated(runs, overrides, message):
    with pytest.raises(config.ConfigError, match=message):
        config.open_run("tiny", "phantom", overrides=overrides, suffix="control")
    assert not runs.exists()


def test_valid_override_is_applied(runs):
    run = config.open_run("tiny", "phantom", overrides={"phantom.face_coupling": 0.0}, suffix="c0")
    assert run.params["phantom"]["face_coupling"] == 0.0
    assert "face_coupling" not in config.load_profile("tiny")["phantom"]


def test_profile_limits_reach_the_loader(runs, tmp_path, monkeypatch):
    """`cohort.age_range`, `cohort.max_voxels` and `cohort.max_shear_deg` of a profile are the loader's limits
    (an infant study sets an age range of [0, 120]); the loader's constants otherwise; bad values are refused."""
    from refacelib.data import bids as data
    from refacelib.pipeline import cohort

    folder = tmp_path / "infants"
    folder.mkdir()
    seen = {}

    def fake_load_bids(root, **kw):
        seen.update(kw)
        raise data.DatasetError("stop here")

    monkeypatch.setattr(cohort, "load_bids", fake_load_bids)
    defaults = (tuple(data.AGE_RANGE), data.MAX_VOXELS, data.MAX_SHEAR_DEG)
    chosen = {"cohort.age_range": [0, 120], "cohort.max_voxels": 1024 ** 3, "cohort.max_shear_deg": 12.5}
    for overrides, expected in (({}, defaults), (chosen, ((0, 120), 1024 ** 3, 12.5))):
        seen.clear()
        with pytest.raises(data.DatasetError, match="stop here"):
            cohort.prepare_dataset(config.open_run("tiny", str(folder), overrides=overrides))
        assert (tuple(seen["age_range"]), seen["max_voxels"], seen["max_shear_deg"]) == expected
    for key, bad in (("cohort.age_range", [0]), ("cohort.max_voxels", 0), ("cohort.max_voxels", "big"),
                     ("cohort.max_shear_deg", 60)):
        with pytest.raises(config.ConfigError, match=key):
            config.open_run("tiny", str(folder), overrides={key: bad})
