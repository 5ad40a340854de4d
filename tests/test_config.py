"""Profiles, dataset labels and run folders."""
import pytest
import yaml

from refacelib import config


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
