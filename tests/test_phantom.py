"""The phantom: seeded reproducibility, the face coupling measured on images, BIDS output."""
import nibabel as nib
import numpy as np
import pytest
from sklearn.model_selection import KFold

from refacelib.data import phantom
from refacelib.data.bids import load_bids, load_image
from refacelib.data.template import load_template

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
    """The phantom of the negative control (`make controls`, coupling 0): two subjects' heads are the
    same outside the face, so nothing an attacker sees predicts the face (pose, scale and intensity,
    shared by every candidate through the registration, held still here)."""
    from refacelib.controls import control_overrides

    null = {k.removeprefix("phantom."): v for k, v in control_overrides(0.0).items()}
    params = phantom.PhantomParams(voxel_mm=4.0, **null, **STILL)
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


# --------------------------------------------------------------------------- oracle and retest scans
def _original_image(index, basis, params):
    """The subject's image by the formula of the phantom before the oracle/retest refactoring."""
    from scipy import ndimage

    latents = phantom.sample_latents(index, params, basis.coupling_matrix)
    tpl = basis.template
    centre = tpl.affine[:3, :3] @ (np.array(tpl.shape) / 2.0) + tpl.affine[:3, 3]
    pose = phantom._rotation(latents["rotation_deg"]) * latents["scale"]
    grid = np.indices(tpl.shape, dtype=np.float32).reshape(3, -1)
    world = tpl.affine[:3, :3] @ grid + tpl.affine[:3, 3:4]
    src_world = np.linalg.inv(pose) @ (world - centre[:, None] - latents["translation_mm"][:, None]) + centre[:, None]
    inv = np.linalg.inv(tpl.affine)
    src_vox = inv[:3, :3] @ src_world + inv[:3, 3:4]
    u = phantom._displacement(basis, latents, params)
    u_at = np.stack([ndimage.map_coordinates(u[i], src_vox, order=1, mode="nearest") for i in range(3)])
    coords = (src_vox - (inv[:3, :3] @ u_at)).reshape((3, *tpl.shape))
    image = ndimage.map_coordinates(tpl.data, coords, order=1, mode="constant", cval=0.0)
    site = "site-B" if params.split_of(index) == "test_external" else "site-A"
    image = image * latents["intensity"] * phantom._bias_field(tpl.shape, latents["bias"])
    ref = float(np.percentile(tpl.data[tpl.head], 95))
    if site == "site-B":
        image = ref * np.clip(image / ref, 0, None) ** params.external_gamma
    sigma = params.noise_sd * ref * (params.external_noise_factor if site == "site-B" else 1.0)
    noise = np.random.default_rng(latents["noise_seed"]).standard_normal((2, *tpl.shape)).astype(np.float32)
    return np.sqrt((image + sigma * noise[0]) ** 2 + (sigma * noise[1]) ** 2).astype(np.float32)


def _tests_params(**kw):
    return phantom.PhantomParams(voxel_mm=4.0, n_train=1, n_val=0, n_test_internal=1, n_test_external=1, **kw)


def test_subject_images_are_unchanged_by_the_reference_scans(template):
    params = _tests_params()
    basis = phantom.build_basis(template, params)
    for i in range(params.n_subjects):  # site A and site B
        original = _original_image(i, basis, params)
        assert np.array_equal(phantom.generate_subject(i, basis, params)["image"], original)
        assert np.array_equal(phantom.generate_with_references(i, basis, params)["image"], original)


def test_oracle_is_the_subject_at_full_coupling(template):
    params = _tests_params(face_coupling=1.0)
    basis = phantom.build_basis(template, params)
    for i in (1, 2):
        s = phantom.generate_with_references(i, basis, params)
        assert np.array_equal(s["oracle_latents"]["face_latents"], s["latents"]["face"])
        assert np.array_equal(s["oracle"], s["image"])


def test_oracle_is_the_mean_face_without_coupling(template):
    params = _tests_params(face_coupling=0.0)
    basis = phantom.build_basis(template, params)
    s = phantom.generate_with_references(1, basis, params)
    assert np.abs(s["latents"]["face"]).min() > 0
    assert np.all(s["oracle_latents"]["face_latents"] == 0)
    assert s["oracle_latents"]["soft_tissue"] == s["latents"]["soft_tissue"]  # seen in the scalp
    # the keyword overrides regenerate the same oracle: same pose, imaging and noise draw
    again = phantom.generate_subject(1, basis, params, face_latents=np.zeros(5))
    assert np.array_equal(again["image"], s["oracle"])
    assert np.array_equal(again["latents"]["face"], np.zeros(5)) and again["muscle"] == s["muscle"]
    # soft tissue invisible after defacing: the oracle takes its mean
    hidden = _tests_params(face_coupling=0.0, soft_tissue_scalp_fraction=0.0)
    lat = phantom.sample_latents(1, hidden, basis.coupling_matrix)
    assert phantom.oracle_latents(lat, hidden, basis.coupling_matrix)["soft_tissue"] == 0.0


@pytest.mark.parametrize("scalp_fraction", [0.3, 0.0])
def test_oracle_differs_from_the_subject_only_near_the_face(template, scalp_fraction):
    from scipy import ndimage

    params = _tests_params(face_coupling=0.5, soft_tissue_scalp_fraction=scalp_fraction)
    basis = phantom.build_basis(template, params)
    s = phantom.generate_with_references(1, basis, params)
    oracle = {**s["latents"], "face": s["oracle_latents"]["face_latents"],
              "soft_tissue": s["oracle_latents"]["soft_tissue"]}
    du = phantom._displacement(basis, oracle, params) - phantom._displacement(basis, s["latents"], params)
    assert np.all(du[:, basis.face_weight == 0] == 0) and np.abs(du).max() > 0.5
    # output voxels whose backward warp reads the displacement far from the face (one voxel
    # margin): the pose, identical for both, maps them; there the images agree bit for bit
    support = ndimage.binary_dilation(basis.face_weight > 0, iterations=1).astype(np.float32)
    src = phantom._pose_coords(template, s["latents"])
    far = ndimage.map_coordinates(support, src, order=1, mode="nearest").reshape(template.shape) == 0
    assert (far & template.head).sum() > 0.5 * template.head.sum()
    assert np.array_equal(s["oracle"][far], s["image"][far])
    assert np.abs(s["oracle"][template.face] - s["image"][template.face]).mean() > 1.0


def test_retest_differs_by_the_noise_draw_only(template):
    params = _tests_params()
    basis = phantom.build_basis(template, params)
    bigger = phantom.PhantomParams(voxel_mm=4.0, n_train=1, n_val=0, n_test_internal=5, n_test_external=1)
    assert phantom.retest_seed(1, params) == phantom.retest_seed(1, bigger)  # (seed, index) only
    for i in (1, 2):
        s = phantom.generate_with_references(i, basis, params)
        seed = phantom.retest_seed(i, params)
        assert seed != s["latents"]["noise_seed"]
        assert np.array_equal(phantom.generate_subject(i, basis, params, noise_seed=seed)["image"], s["retest"])
        sigma = params.noise_sd * float(np.percentile(template.data[template.head], 95))
        sigma *= params.external_noise_factor if s["site"] == "site-B" else 1.0
        diff = s["retest"] - s["image"]
        assert np.mean(diff != 0) > 0.99 and np.abs(diff).mean() < 3 * sigma
    quiet = _tests_params(noise_sd=0.0)  # without noise, the retest is the same image
    s = phantom.generate_with_references(2, phantom.build_basis(template, quiet), quiet)
    assert np.array_equal(s["retest"], s["image"])


def test_cohort_version_enters_the_cache_key_but_is_no_knob():
    from dataclasses import asdict

    assert asdict(phantom.PhantomParams())["version"] == phantom.COHORT_VERSION
    with pytest.raises(ValueError, match="unknown phantom parameter"):
        phantom.PhantomParams.from_dict({"version": 1})


def _nifti(path):
    img = nib.load(str(path))
    return np.asanyarray(img.dataobj), img.affine


def test_write_cohort_writes_reference_scans_of_test_subjects_resumes_and_ignores_workers(template, tmp_path, monkeypatch):
    params = phantom.PhantomParams(voxel_mm=4.0, n_train=2, n_val=1, n_test_internal=1, n_test_external=1)
    basis = phantom.build_basis(template, params)
    first = tmp_path / "first"
    phantom.write_cohort(first, basis, params, progress=False, n_jobs=2)  # worker processes
    assert not list(tmp_path.glob(".phantom-basis-*"))  # the basis handed to them is removed
    deriv = first / "derivatives" / "phantom"
    for i in range(params.n_subjects):
        sid = f"sub-{i + 1:03d}"
        refs = [deriv / sid / "anat" / f"{sid}_desc-{name}_T1w.nii.gz" for name in ("oracle", "retest")]
        if not params.split_of(i).startswith("test"):
            assert not any(p.exists() for p in refs)
            continue
        t1w, t1w_affine = _nifti(first / sid / "anat" / f"{sid}_T1w.nii.gz")
        s = phantom.generate_with_references(i, basis, params)
        for path, key in zip(refs, ("oracle", "retest")):
            data, affine = _nifti(path)
            assert data.shape == t1w.shape and np.array_equal(affine, t1w_affine)
            expected = phantom.stored_image(s, s[key], params)
            assert np.array_equal(data, np.asanyarray(expected.dataobj))
        if s["site"] == "site-B":
            assert nib.aff2axcodes(t1w_affine) == ("L", "P", "S") and t1w.shape[2] < template.shape[2]
    # an interrupted run: the external subject stopped after its oracle, the tables not written
    second = tmp_path / "second"
    calls = []
    for name in ("generate_subject", "generate_with_references"):
        original = getattr(phantom, name)
        monkeypatch.setattr(phantom, name, lambda i, *a, _f=original, **k: calls.append(i) or _f(i, *a, **k))
    # in this process (the counting patch does not reach worker processes); the files must
    # equal those the two workers wrote, bit for bit
    phantom.write_cohort(second, basis, params, progress=False, n_jobs=1)
    sid = "sub-005"
    for path in (second / sid / "anat" / f"{sid}_T1w.nii.gz",
                 second / "derivatives" / "phantom" / sid / "anat" / f"{sid}_desc-retest_T1w.nii.gz",
                 second / "participants.tsv", second / "dataset_description.json"):
        path.unlink()
    calls.clear()
    phantom.write_cohort(second, basis, params, progress=False, n_jobs=1)
    assert calls == [4]  # subjects with a T1w are complete
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for rel in files:
        if rel.name.endswith(".nii.gz"):
            a, b = _nifti(first / rel), _nifti(second / rel)
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), rel
        else:
            assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel


def test_face_weight_is_zero_on_the_rest_of_the_head_and_one_deep_in_the_face(template):
    w = phantom._face_weight(template)
    rest = template.head & ~template.face
    assert w[rest].max() == 0.0  # a face deformation moves nothing a defaced image keeps outside the face
    assert w[template.face].max() == pytest.approx(1.0)
    assert 0.0 <= w.min() and w.max() <= 1.0


def test_face_normal_sd_known_answer_and_published_range(template):
    # no face components, no scalp: the SD is the soft tissue's amplitude times the face weight
    only_tissue = phantom.PhantomParams(voxel_mm=4.0, face_amplitude_mm=0.0, soft_tissue_mm=1.5,
                                        soft_tissue_scalp_fraction=0.0)
    basis = phantom.build_basis(template, only_tissue)
    sd = phantom.face_normal_sd(basis, only_tissue)
    skin = template.face & ~__import__("scipy").ndimage.binary_erosion(template.head)
    np.testing.assert_allclose(sd, 1.5 * basis.face_weight[skin], rtol=1e-5)
    # the default phantom's faces vary over the published range (0 to >= 3 mm), not by tenths
    default = phantom.PhantomParams(voxel_mm=4.0)
    sd = phantom.face_normal_sd(phantom.build_basis(template, default), default)
    assert sd.max() >= phantom.REFERENCE_FACE_SD_MM[1]
    assert np.median(sd) >= 1.0


def test_default_faces_differ_from_the_mean_face_by_millimetres(template):
    """The face latents alone move a face by a sizeable fraction of a millimetre (the book's face metric)."""
    from scipy import ndimage

    from refacelib.evaluation.reid import candidate_msd

    params = phantom.PhantomParams(voxel_mm=4.0)
    basis = phantom.build_basis(template, params)
    msds = []
    for i in range(4):
        s = phantom.generate_subject(i, basis, params)
        m = phantom.generate_subject(i, basis, params, face_latents=np.zeros(5))
        msds.append(candidate_msd(s["image"], {"m": m["image"]}, s["affine"],
                                  ndimage.binary_dilation(s["face"], iterations=3))["m"])
    assert np.median(msds) > 0.4, msds
