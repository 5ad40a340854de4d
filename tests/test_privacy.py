"""Pseudonyms replace the participant ids of real data everywhere after loading."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from refacelib import cohort, config, privacy
from refacelib.data import load_bids

RAW_IDS = ["sub-alice", "sub-bob", "sub-carol", "sub-dave", "sub-erin"]


def _head(rng, voxel=4.0):
    """An ellipsoid 'head' (about 3.7 L) in noisy air: a whole head to the input screen."""
    g = (np.indices((48, 56, 60)) - np.array([23.5, 27.5, 29.5])[:, None, None, None]) * voxel
    inside = (g[0] / 80) ** 2 + (g[1] / 100) ** 2 + (g[2] / 110) ** 2 < 1
    return (np.where(inside, 100.0, 0.0) + 1.0 + np.abs(rng.normal(0, 3, inside.shape))).astype(np.float32)


@pytest.fixture
def study(tmp_path, rng):
    root = tmp_path / "study"
    for pid in RAW_IDS:
        (root / pid / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(_head(rng), np.diag([4.0, 4.0, 4.0, 1.0])), str(root / pid / "anat" / f"{pid}_T1w.nii.gz"))
    pd.DataFrame({"participant_id": RAW_IDS, "age": [61, 72, 55, 68, 70], "sex": list("FMFMF")}).to_csv(
        root / "participants.tsv", sep="\t", index=False)
    return root


def test_pseudonym_is_stable_keyed_and_not_the_id():
    a = privacy.pseudonym("sub-alice", key=b"key-1")
    assert a == privacy.pseudonym("sub-alice", key=b"key-1") and a.startswith("sub-p") and "alice" not in a
    assert a != privacy.pseudonym("sub-alice", key=b"key-2") != privacy.pseudonym("sub-bob", key=b"key-1")
    with pytest.raises(ValueError):
        privacy.pseudonym("sub-alice", key=b"")


def test_key_depends_on_the_private_table_and_seed(study):
    key = privacy.dataset_key(study, seed=7)
    assert key == privacy.dataset_key(study, seed=7) != privacy.dataset_key(study, seed=8)
    (study / "participants.tsv").write_text((study / "participants.tsv").read_text() + "\n")
    assert privacy.dataset_key(study, seed=7) != key


def test_pseudonymized_dataset_keeps_rows_splits_and_images(study):
    raw = load_bids(study, seed=3)
    ds = privacy.pseudonymize_dataset(raw, key=b"k")
    assert [s.t1w for s in ds.subjects] == [s.t1w for s in raw.subjects]
    assert list(ds.participants["split"]) == list(raw.participants["split"])
    assert list(ds.participants["age"]) == list(raw.participants["age"])
    assert ds.ids == [privacy.pseudonym(i, key=b"k") for i in raw.ids]
    assert [s.row["participant_id"] for s in ds.subjects] == ds.ids == list(ds.participants["participant_id"])
    assert list(raw.participants["participant_id"]) == sorted(RAW_IDS)  # the input is left as it was


def test_a_run_on_real_data_sees_only_pseudonyms(study, tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    run = config.open_run("tiny", str(study))
    ds = cohort.prepare_dataset(run)
    text = ds.participants.to_csv() + " ".join(map(str, (s.row for s in ds.subjects))) + " ".join(ds.ids)
    assert not any(pid in text for pid in RAW_IDS)
    assert all(i.startswith("sub-p") for i in ds.ids)
    assert cohort.prepare_dataset(run).ids == ds.ids  # stable from one chapter to the next
    assert (run.artifacts / "input_check.csv").exists()
