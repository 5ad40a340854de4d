"""Brain-only and already-defaced inputs are detected and reported, whole heads pass."""
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from refacelib.data import inputcheck, phantom
from refacelib.deface import methods as deface
from refacelib.pipeline import cohort, config
from refacelib.data.bids import DatasetError, load_bids
from refacelib.data.template import head_mask_from_intensity, load_template


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """One 4 mm phantom head (noisy background) with its brain and face masks."""
    template = load_template(4.0, cache_dir=tmp_path_factory.getbasetemp() / "template")  # shared with test_phantom
    params = phantom.PhantomParams(voxel_mm=4.0, n_train=1, n_val=0, n_test_internal=0, n_test_external=0)
    return phantom.generate_subject(0, phantom.build_basis(template, params), params)


def _face_zeroed(s):
    """The face (ground-truth mask, 8 mm margin into the air) set to zero, the brain kept."""
    removal = ndimage.binary_dilation(s["face"], iterations=2) & ~s["brain"]
    return np.where(removal, 0.0, s["image"]).astype(np.float32)


def test_original_head_passes(head):
    status, reason, f = inputcheck.classify_head(head["image"], head["affine"])
    assert (status, reason) == ("whole_head", "") and f["volume_ml"] > 3000 and f["face_cut"] < 0.05
    # a scan whose background was zeroed right at the scalp is still a whole head
    tight = np.where(ndimage.binary_dilation(head_mask_from_intensity(head["image"])), head["image"], 0.0)
    assert inputcheck.classify_head(tight, head["affine"])[0] == "whole_head"


def test_face_zeroed_head_is_flagged_as_defaced(head):
    status, reason, f = inputcheck.classify_head(_face_zeroed(head), head["affine"])
    assert status == "defaced" and reason.startswith("looks already defaced") and f["face_cut"] > 0.3


def test_quickshear_output_is_flagged_as_defaced(head):
    res = deface.deface_quickshear(head["image"], head["affine"], brain_mask=head["brain"])
    assert inputcheck.classify_head(res.image, head["affine"])[0] == "defaced"


def test_skull_stripped_head_is_flagged_as_brain_only(head):
    brain = np.where(head["brain"], head["image"], 0.0)
    status, reason, f = inputcheck.classify_head(brain, head["affine"])
    assert status == "brain_only" and "skull-stripped" in reason and f["volume_ml"] < 2000


def _bids(root, images, affine):
    rows = []
    for i, image in enumerate(images, 1):
        pid = f"sub-{i:02d}"
        (root / pid / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.asarray(image, np.float32), affine), str(root / pid / "anat" / f"{pid}_T1w.nii.gz"))
        rows.append({"participant_id": pid, "age": 60 + i, "sex": "F" if i % 2 else "M"})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def test_dataset_screen_names_each_bad_file_and_caches(head, tmp_path, monkeypatch):
    brain = np.where(head["brain"], head["image"], 0.0)
    root = _bids(tmp_path / "ds", [head["image"], _face_zeroed(head), brain], head["affine"])
    ds = load_bids(root)
    cache = tmp_path / "check.csv"
    with pytest.raises(DatasetError) as err:
        inputcheck.require_whole_heads(ds, voxel_mm=4.0, cache=cache)
    text = str(err.value)
    assert "2 of 3 image(s) are not whole-head" in text
    assert "sub-02/anat/sub-02_T1w.nii.gz: looks already defaced" in text
    assert "sub-03/anat/sub-03_T1w.nii.gz: looks brain-only" in text
    assert "sub-01/" not in text
    # unchanged files are not read again
    monkeypatch.setattr(inputcheck, "load_subject_array", lambda *a, **k: pytest.fail("image read again"))
    table = inputcheck.screen_dataset(ds, voxel_mm=4.0, cache=cache)
    assert list(table["status"]) == ["whole_head", "defaced", "brain_only"]


def test_run_on_a_dataset_with_a_defaced_image_stops_in_prepare_dataset(head, tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    root = _bids(tmp_path / "study", [head["image"], _face_zeroed(head)], head["affine"])
    run = config.open_run("tiny", str(root))
    with pytest.raises(DatasetError, match=r"sub-02/anat/sub-02_T1w.nii.gz: looks already defaced"):
        cohort.prepare_dataset(run)
