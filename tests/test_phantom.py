"""The phantom: seeded reproducibility, the face coupling measured on images, BIDS output."""
import nibabel as nib
import numpy as np
import pytest
from sklearn.model_selection import KFold

from refacelib import phantom
from refacelib.data import load_bids, load_image
from refacelib.template import load_template

STILL = dict(rotation_deg=0.0, translation_mm=0.0, scale_sd=0.0, sex_scale=0.0, intensity_sd=0.0,
             bias_strength=0.0, noise_sd=0.0, soft_tissue_mm=0.0)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return load_template(4.0, cache_dir=tmp_path_factory.getbasetemp() / "template")


def test_seed_reproduces_subject_bit_for_bit(template):
    params = phantom.PhantomParams(voxel_mm=4.0, n_train=3, n_val=0, n_test_internal=0, n_test_external=0)
    a = phantom.generate_subject(2, phantom.build_basis(template, params), params)
    bigger = phantom.PhantomParams(voxel_mm=4.0, n_train=30, n_val=0, n_test_internal=0, n_test_external=0)
    b = phantom.generate_subject(2, phantom.build_basis(template, bigger), bigger)
    assert np.array_equal(a["image"], b["image"])
    assert a["muscle"] == b["muscle"]
    other = phantom.PhantomParams(seed=99, voxel_mm=4.0, n_train=3, n_val=0, n_test_internal=0, n_test_external=0)
    c = phantom.generate_subject(2, phantom.build_basis(template, other), other)
    assert not np.array_equal(a["image"], c["image"])


def _face_predictability(template, coupling, n=48):
    """Out-of-fold R^2 of the face voxels predicted from the voxels far from the face."""
    params = phantom.PhantomParams(voxel_mm=4.0, n_train=n, n_val=0, n_test_internal=0, n_test_external=0,
                                   face_coupling=coupling, face_amplitude_mm=4.0, **STILL)
    basis = phantom.build_basis(template, params)
    face = template.face
    rest = template.head & (basis.face_weight < 0.02)
    images = [phantom.generate_subject(i, basis, params)["image"] for i in range(n)]
    x = np.stack([im[rest] for im in images])
    y = np.stack([im[face] for im in images])
    pred = np.zeros_like(y)
    for train, test in KFold(6, shuffle=True, random_state=0).split(x):
        pred[test] = _kernel_ridge(x[train], y[train], x[test])
    return 1.0 - ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()


def _kernel_ridge(x, y, x_new, alpha=1e-2):
    """Linear ridge in its dual form (n << p), on standardised features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs, xn = (x - mu) / sd, (x_new - mu) / sd
    gram = xs @ xs.T
    coef = np.linalg.solve(gram + alpha * np.trace(gram) / len(x) * np.eye(len(x)), y - y.mean(0))
    return xn @ xs.T @ coef + y.mean(0)


def test_face_coupling_changes_what_the_rest_of_the_head_predicts(template):
    r2_coupled = _face_predictability(template, 1.0)
    r2_free = _face_predictability(template, 0.0)
    assert r2_coupled > 0.5, r2_coupled
    assert r2_free < 0.15, r2_free
    assert r2_coupled > r2_free + 0.4


def test_negative_control_face_varies_but_is_unpredictable(template):
    params = phantom.PhantomParams(voxel_mm=4.0, face_coupling=0.0, cranial_amplitude_mm=0.0,
                                   soft_tissue_scalp_fraction=0.0, **STILL)
    basis = phantom.build_basis(template, params)
    a, b = (phantom.generate_subject(i, basis, params)["image"] for i in (0, 1))
    rest = template.head & (basis.face_weight < 0.02)
    assert np.abs(a[rest] - b[rest]).max() < 1e-3 * a.max()  # nothing outside the face differs
    assert np.abs(a[template.face] - b[template.face]).mean() > 1.0  # the faces do


def test_write_cohort_is_a_valid_bids_dataset(template, tmp_path):
    params = phantom.PhantomParams(voxel_mm=4.0, n_train=3, n_val=1, n_test_internal=1, n_test_external=2)
    phantom.write_cohort(tmp_path, phantom.build_basis(template, params), params, progress=False)
    ds = load_bids(tmp_path)
    assert ds.has_muscle and len(ds.subjects) == 7
    assert list(ds.participants["split"]).count("test_external") == 2
    assert set(ds.participants["site"]) == {"site-A", "site-B"}
    ext = ds.subset("test_external")[0].t1w
    raw = nib.load(str(ext))
    assert nib.aff2axcodes(raw.affine) == ("L", "P", "S")
    zooms = raw.header.get_zooms()
    assert zooms[2] == pytest.approx(1.5 * zooms[0], rel=0.05)
    assert nib.aff2axcodes(load_image(ext).affine) == ("R", "A", "S")
    assert (tmp_path / "derivatives" / "phantom" / "latents.csv").exists()


def test_face_coupling_out_of_range_is_refused():
    with pytest.raises(ValueError, match="face_coupling"):
        phantom.PhantomParams.from_dict({"face_coupling": 1.5})
    with pytest.raises(ValueError, match="unknown phantom parameter"):
        phantom.PhantomParams.from_dict({"face_couplin": 0.5})
