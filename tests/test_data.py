"""Tests for refacelib.data.bids: BIDS indexing, image validation, reorientation."""
import doctest

import nibabel as nib
import numpy as np
import pytest

from refacelib.data import bids as data
from refacelib.data.bids import (
    DatasetError,
    Subject,
    load_bids,
    load_image,
    load_subject_array,
    resample_to_spacing,
)

SHAPE = (12, 14, 10)


def _save(path, arr=None, affine=None, *, seed=0):
    """Write a NIfTI image (random positive data by default) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = np.random.default_rng(seed).uniform(1, 2, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(arr, np.eye(4) if affine is None else affine), str(path))
    return path


def _tsv(root, header, rows):
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in r) for r in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")


def _dataset(root, n=3, *, tsv_rows=None, header=("participant_id", "age", "sex")):
    """``n`` subjects with images; rows default to (id, age, sex)."""
    root.mkdir(parents=True, exist_ok=True)
    ids = [f"sub-{i:02d}" for i in range(1, n + 1)]
    for i, pid in enumerate(ids):
        _save(root / pid / "anat" / f"{pid}_T1w.nii.gz", seed=i)
    if tsv_rows is None:
        tsv_rows = [(pid, 20 + i, "F" if i % 2 else "M") for i, pid in enumerate(ids)]
    _tsv(root, header, tsv_rows)
    return root


# ---------------------------------------------------------------- load_bids: good


def test_good_dataset_loads(tmp_path):
    root = _dataset(tmp_path / "ds", tsv_rows=[
        ("03", "41", "female"), ("sub-01", "22.5", "MALE"), ("02", "30", "f")])
    ds = load_bids(root)
    assert ds.ids == ["sub-01", "sub-02", "sub-03"]
    assert list(ds.participants["participant_id"]) == ds.ids
    assert list(ds.participants["sex"]) == ["M", "F", "F"]
    assert ds.participants["age"].dtype == float and ds.participants["age"].iloc[0] == 22.5
    assert set(ds.participants["site"]) == {"site-1"}
    assert set(ds.participants["split"]) <= {"train", "val", "test"}
    assert all(s.t1w.is_file() and s.row["participant_id"] == s.participant_id
               for s in ds.subjects)
    assert not ds.has_muscle
    assert sum(len(ds.subset(s)) for s in ("train", "val", "test")) == 3


def test_split_deterministic(tmp_path):
    root = _dataset(tmp_path / "ds", n=20)
    a, b, c = (list(load_bids(root, seed=s).participants["split"]) for s in (7, 7, 8))
    assert a == b
    assert a != c
    assert (a.count("train"), a.count("val"), a.count("test")) == (16, 2, 2)


def test_split_column_site_and_muscle(tmp_path):
    header = ("participant_id", "age", "sex", "site", "split", *data.MUSCLE_COLUMNS)
    root = _dataset(tmp_path / "ds", n=2, header=header, tsv_rows=[
        ("sub-01", 20, "M", "siteA", "test_external", 40, 50, "n/a"),
        ("sub-02", 30, "F", "n/a", "train", 41, 51, 61)])
    ds = load_bids(root)
    assert list(ds.participants["split"]) == ["test_external", "train"]
    assert list(ds.participants["site"]) == ["siteA", "site-1"]
    assert ds.has_muscle
    assert [s.participant_id for s in ds.subset("test_external")] == ["sub-01"]
    with pytest.raises(DatasetError, match="unknown split"):
        ds.subset("holdout")


def test_session_folders_first_session(tmp_path):
    root = tmp_path / "ds"
    for ses in ("ses-2", "ses-1"):
        _save(root / "sub-01" / ses / "anat" / f"sub-01_{ses}_T1w.nii")
    _tsv(root, ("participant_id", "age", "sex"), [("sub-01", 20, "M")])
    assert load_bids(root).subjects[0].t1w.parent.parent.name == "ses-1"


# ---------------------------------------------------------------- load_bids: bad


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="nope: dataset folder not found"):
        load_bids(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="file: dataset folder not found or not a folder"):
        load_bids(tmp_path / "file")


def test_no_images(tmp_path):
    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    _tsv(tmp_path, ("participant_id", "age", "sex"), [("sub-01", 20, "M")])
    with pytest.raises(DatasetError, match="no T1w images found"):
        load_bids(tmp_path)


def test_missing_participants(tmp_path):
    root = _dataset(tmp_path / "ds")
    (root / "participants.tsv").unlink()
    with pytest.raises(DatasetError, match="participants.tsv: file not found"):
        load_bids(root)


def test_missing_required_columns(tmp_path):
    root = _dataset(tmp_path / "ds", n=1, header=("participant_id", "years"),
                    tsv_rows=[("sub-01", 20)])
    with pytest.raises(DatasetError, match="participants.tsv: missing required column.*age, sex"):
        load_bids(root)


def test_duplicate_ids(tmp_path):
    root = _dataset(tmp_path / "ds", tsv_rows=[
        ("sub-01", 20, "M"), ("01", 21, "M"), ("sub-02", 22, "F"), ("sub-03", 23, "F")])
    with pytest.raises(DatasetError, match="duplicate participant_id.*sub-01"):
        load_bids(root)


def test_bad_ages(tmp_path):
    root = _dataset(tmp_path / "ds", tsv_rows=[
        ("sub-01", "twenty", "M"), ("sub-02", "n/a", "F"), ("sub-03", 23, "F")])
    with pytest.raises(DatasetError, match=r"non-numeric.*age for sub-01, sub-02$"):
        load_bids(root)


@pytest.mark.parametrize("age", [0, 250, -3, 0.5, 120.5])
def test_implausible_age_is_refused(tmp_path, age):
    root = _dataset(tmp_path / "ds", tsv_rows=[
        ("sub-01", 20, "M"), ("sub-02", age, "F"), ("sub-03", 23, "F")])
    with pytest.raises(DatasetError, match=rf"implausible age\(s\) for sub-02 \({age:g}\); "
                                           r"expected 1 to 120 years \(age_range\)"):
        load_bids(root)


def test_age_range_bounds_are_inclusive_and_configurable(tmp_path):
    root = _dataset(tmp_path / "ds", tsv_rows=[
        ("sub-01", 1, "M"), ("sub-02", 120, "F"), ("sub-03", "0.5", "F")])
    with pytest.raises(DatasetError, match=r"implausible age\(s\) for sub-03 \(0.5\);"):
        load_bids(root)
    ages = load_bids(root, age_range=(0, 120)).participants["age"]
    assert list(ages) == [1.0, 120.0, 0.5]
    with pytest.raises(DatasetError, match="age_range must be two finite numbers"):
        load_bids(root, age_range=(120, 1))


def test_duplicate_column_is_refused(tmp_path):
    root = _dataset(tmp_path / "ds", n=2, header=("participant_id", "age", "sex", "age"),
                    tsv_rows=[("sub-01", 20, "M", 70), ("sub-02", 21, "F", 71)])
    with pytest.raises(DatasetError, match=r"participants.tsv: duplicate column\(s\) age "):
        load_bids(root)


def test_bad_sex_codes(tmp_path):
    root = _dataset(tmp_path / "ds", tsv_rows=[
        ("sub-01", 20, "0"), ("sub-02", 21, "1"), ("sub-03", 23, "F")])
    with pytest.raises(DatasetError, match=r"unknown sex code\(s\) 0, 1 for sub-01, sub-02"):
        load_bids(root)


def test_bad_split_values(tmp_path):
    root = _dataset(tmp_path / "ds", n=2, header=("participant_id", "age", "sex", "split"),
                    tsv_rows=[("sub-01", 20, "M", "train"), ("sub-02", 21, "F", "holdout")])
    with pytest.raises(DatasetError, match="unknown split value.*holdout for sub-02"):
        load_bids(root)


def test_non_numeric_muscle(tmp_path):
    root = _dataset(tmp_path / "ds", n=1, header=("participant_id", "age", "sex",
                                                   "muscle_hu_thigh"),
                    tsv_rows=[("sub-01", 20, "M", "dense")])
    with pytest.raises(DatasetError, match="'muscle_hu_thigh' has non-numeric.*sub-01"):
        load_bids(root)


def test_row_without_image(tmp_path):
    root = _dataset(tmp_path / "ds", n=2, tsv_rows=[
        ("sub-01", 20, "M"), ("sub-02", 21, "F"), ("sub-09", 22, "F")])
    with pytest.raises(DatasetError, match="without a T1w image: sub-09"):
        load_bids(root)


def test_image_without_row(tmp_path):
    root = _dataset(tmp_path / "ds", n=3, tsv_rows=[("sub-01", 20, "M"), ("sub-02", 21, "F")])
    with pytest.raises(DatasetError, match=r"without a participants.tsv row: sub-03 "
                                           r"\(sub-03/anat/sub-03_T1w\.nii\.gz\)"):
        load_bids(root)


def test_empty_image_file(tmp_path):
    root = _dataset(tmp_path / "ds", n=2)
    (root / "sub-02" / "anat" / "sub-02_T1w.nii.gz").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"^sub-02/anat/sub-02_T1w\.nii\.gz: .*empty"):
        load_bids(root)


def test_bad_split_fractions(tmp_path):
    with pytest.raises(DatasetError, match="split_fractions"):
        load_bids(_dataset(tmp_path / "ds"), split_fractions=(0.5, 0.5, 0.5))


@pytest.mark.parametrize("names", [("sub-02_T1w.nii.gz", "sub-02_acq-fast_T1w.nii.gz"),
                                   ("sub-02_T1w.nii", "sub-02_T1w.nii.gz")], ids=["acq", "nii-and-gz"])
def test_several_t1w_for_one_subject_are_listed(tmp_path, names):
    root = _dataset(tmp_path / "ds", n=2)
    for name in names:
        _save(root / "sub-02" / "anat" / name)
    listed = ", ".join(f"sub-02/anat/{n}" for n in sorted(names))
    with pytest.raises(DatasetError, match=rf"several T1w images for one subject .*: sub-02: {listed}$"):
        load_bids(root)


@pytest.mark.parametrize("target, reason", [("sub-02_T1w.nii.gz", "Too many levels of symbolic links"),
                                            ("gone.nii.gz", "No such file or directory")],
                         ids=["loop", "dangling"])
def test_unfollowable_symlink_is_named(tmp_path, target, reason):
    root = _dataset(tmp_path / "ds", n=2)
    link = root / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    link.unlink()
    link.symlink_to(target)
    message = rf"sub-02/anat/sub-02_T1w\.nii\.gz: symbolic link cannot be followed \({reason}\)"
    with pytest.raises(DatasetError, match="^" + message):
        load_bids(root)
    with pytest.raises(DatasetError, match=message):
        load_image(link)


def _rgb(shape=SHAPE):
    arr = np.zeros(shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    arr["R"] = 100
    return arr


@pytest.mark.parametrize("arr, kind", [
    (_rgb(), r"RGB or structured \(\[\('R', 'u1'\)"),
    (np.full(SHAPE, 1 + 2j, np.complex64), r"complex \(complex64\)")], ids=["rgb24", "complex64"])
def test_non_real_voxel_types_are_refused(tmp_path, arr, kind):
    path = _save(tmp_path / "odd.nii.gz", arr)
    assert nib.load(str(path)).get_data_dtype() == arr.dtype
    with pytest.raises(DatasetError, match=rf"odd\.nii\.gz: unsupported voxel type {kind}"):
        load_image(path)
    root = _dataset(tmp_path / "ds", n=2)
    _save(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz", arr)
    with pytest.raises(DatasetError, match=rf"^sub-02/anat/sub-02_T1w\.nii\.gz: unsupported voxel type {kind}"):
        load_bids(root)  # found while indexing, before any work starts


def _huge_header(path, shape=(2000, 2000, 2000)):
    """A small .nii file whose header claims a float32 volume of ``shape``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape(shape)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hdr.binaryblock + b"\0" * (4 + 4096))
    return path


def test_huge_header_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_read_voxels", lambda *a, **k: pytest.fail("voxels read before the size check"))
    path = _huge_header(tmp_path / "big.nii")
    with pytest.raises(DatasetError, match=r"big\.nii: image too large to load: header shape 2000x2000x2000 "
                                           r"\(8,000,000,000 voxels\) exceeds max_voxels=134,217,728"):
        load_image(path)
    root = _dataset(tmp_path / "ds", n=2)
    (root / "sub-02" / "anat" / "sub-02_T1w.nii.gz").unlink()
    _huge_header(root / "sub-02" / "anat" / "sub-02_T1w.nii")
    with pytest.raises(DatasetError, match=r"^sub-02/anat/sub-02_T1w\.nii: image too large"):
        load_bids(root)


def test_max_voxels_is_configurable(tmp_path):
    path = _save(tmp_path / "t.nii.gz")  # 12 x 14 x 10 = 1680 voxels
    assert load_image(path, max_voxels=1680).shape == SHAPE
    with pytest.raises(DatasetError, match=r"t\.nii\.gz: image too large to load: header shape 12x14x10"):
        load_image(path, max_voxels=1679)
    with pytest.raises(DatasetError, match="image too large"):
        load_subject_array(path, 2.0, max_voxels=1000)


def _sheared(degrees):
    affine = np.diag([1.0, 1.2, 2.0, 1.0])
    affine[0, 1] = 1.2 * np.tan(np.radians(degrees))  # the j axis leans towards i
    return affine


def test_strongly_sheared_affine_is_refused(tmp_path):
    path = _save(tmp_path / "shear.nii.gz", affine=_sheared(20.0))
    with pytest.raises(DatasetError, match=r"shear\.nii\.gz: strongly sheared affine: voxel axes 20\.0 degrees "
                                           r"from perpendicular \(more than max_shear_deg=5\)"):
        load_image(path)
    assert load_image(path, max_shear_deg=25).shape == SHAPE
    assert load_image(_save(tmp_path / "slight.nii.gz", affine=_sheared(2.0))).shape == SHAPE
    root = _dataset(tmp_path / "ds", n=2)
    _save(root / "sub-02" / "anat" / "sub-02_T1w.nii.gz", affine=_sheared(20.0))
    with pytest.raises(DatasetError, match=r"^sub-02/anat/sub-02_T1w\.nii\.gz: strongly sheared"):
        load_bids(root)
    assert len(load_bids(root, max_shear_deg=25).subjects) == 2


# ---------------------------------------------------------------- load_image: bad


def test_truncated_image(tmp_path):
    path = _save(tmp_path / "trunc.nii.gz")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match=r"trunc\.nii\.gz: unreadable, truncated or corrupt"):
        load_image(path)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"not an image" * 10)
    with pytest.raises(DatasetError, match=r"junk\.nii: unreadable"):
        load_image(tmp_path / "junk.nii")
    with pytest.raises(DatasetError, match=r"absent\.nii\.gz: image file not found"):
        load_image(tmp_path / "absent.nii.gz")


@pytest.mark.parametrize("shape,ndim", [((12, 14, 10, 3), 4), ((12, 14), 2)])
def test_not_3d(tmp_path, shape, ndim):
    path = _save(tmp_path / "nd.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(DatasetError, match=rf"nd\.nii\.gz: expected a 3-D image, got {ndim}-D"):
        load_image(path)


def test_4d_trailing_singleton_accepted(tmp_path):
    path = _save(tmp_path / "t.nii.gz", np.ones((12, 14, 10, 1), np.float32))
    img = load_image(path)
    assert img.shape == SHAPE and img.get_data_dtype() == np.float32


@pytest.mark.parametrize("arr", [np.zeros((0, 14, 10), np.float32),
                                 np.zeros(SHAPE, np.float32)], ids=["zero-dim", "all-zero"])
def test_empty_image(tmp_path, arr):
    path = _save(tmp_path / "empty.nii.gz", arr)
    with pytest.raises(DatasetError, match=r"empty\.nii\.gz: empty image"):
        load_image(path)


def test_nan_inf_voxels(tmp_path):
    arr = np.ones(SHAPE, np.float32)
    arr[0, 0, :2] = np.nan
    arr[1, 1, 1] = np.inf
    path = _save(tmp_path / "nan.nii.gz", arr)
    with pytest.raises(DatasetError, match=r"nan\.nii\.gz: 3 NaN or Inf voxel"):
        load_image(path)


@pytest.mark.parametrize("pixdim", [(1, 0, 1), (1, -2, 1), (1, np.nan, 1)])
def test_bad_voxel_size(tmp_path, pixdim):
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), np.eye(4))
    img.header["pixdim"][1:4] = pixdim
    nib.save(img, str(tmp_path / "vox.nii.gz"))
    with pytest.raises(DatasetError, match=r"vox\.nii\.gz: invalid voxel size"):
        load_image(tmp_path / "vox.nii.gz")


def test_singular_affine(tmp_path):
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), None)
    img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    nib.save(img, str(tmp_path / "sing.nii.gz"))
    with pytest.raises(DatasetError, match=r"sing\.nii\.gz: invalid affine"):
        load_image(tmp_path / "sing.nii.gz")


# ---------------------------------------------------------------- orientation, resampling


def _lps_image(tmp_path):
    arr = np.random.default_rng(1).uniform(1, 2, SHAPE).astype(np.float32)
    mark = (3, 4, 6)
    arr[mark] = 100.0
    affine = np.diag([-1.0, -1.2, 2.0, 1.0])
    affine[:3, 3] = (20.0, 15.0, -8.0)
    path = _save(tmp_path / "lps.nii.gz", arr, affine)
    return path, (affine @ [*mark, 1])[:3]


def _peak_world(img):
    ijk = np.unravel_index(np.argmax(np.asarray(img.dataobj)), img.shape)
    return (img.affine @ [*ijk, 1])[:3]


def test_lps_reoriented_to_ras(tmp_path):
    path, world = _lps_image(tmp_path)
    assert nib.aff2axcodes(nib.load(str(path)).affine) == ("L", "P", "S")
    img = load_image(path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert img.get_data_dtype() == np.float32
    assert np.allclose(img.header.get_zooms()[:3], (1.0, 1.2, 2.0))
    assert np.allclose(_peak_world(img), world)


def test_resample_to_spacing(tmp_path):
    path, world = _lps_image(tmp_path)
    out = resample_to_spacing(load_image(path), 1.5)
    assert np.allclose(out.header.get_zooms()[:3], (1.5, 1.5, 1.5))
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    assert out.get_data_dtype() == np.float32
    assert np.all(np.abs(_peak_world(out) - world) <= 1.5)
    with pytest.raises(DatasetError, match="voxel_mm"):
        resample_to_spacing(out, 0)


def test_load_subject_array(tmp_path):
    path, world = _lps_image(tmp_path)
    arr, affine = load_subject_array(Subject("sub-01", path, {}), 2.0)
    assert arr.dtype == np.float32 and arr.ndim == 3
    assert np.allclose(np.abs(np.diag(affine)[:3]), 2.0)
    arr2, _ = load_subject_array(path, 2.0)
    assert np.array_equal(arr, arr2)


def test_doctests():
    assert doctest.testmod(data).failed == 0


def test_public_api():
    assert set(data.__all__) == {
        "MUSCLE_COLUMNS", "REQUIRED_COLUMNS", "AGE_RANGE", "MAX_VOXELS", "MAX_SHEAR_DEG",
        "DatasetError", "Subject", "BIDSDataset",
        "load_bids", "load_image", "resample_to_spacing", "load_subject_array",
            "file_fingerprint", "image_fingerprint", "dataset_fingerprint"}
    assert issubclass(DatasetError, ValueError)
