"""The phantom cohort: a written generative model of whole heads, faces and muscle.

Every subject is pydeface's average head, warped and re-imaged:

* a smooth **cranial deformation** ``sum_k c_k B_k(x)`` (``c ~ N(0, I_K)``,
  ``B_k`` smoothed random vector fields), tapered to zero on the face, so it
  is what a defaced image still shows;
* a **face deformation** ``sum_j f_j F_j(x)`` of five broad components (midface,
  lips, chin, facial width, brow; Gaussian bumps at template landmarks, confined
  to the smooth face weight) with
  ``f = rho M c + sqrt(1 - rho^2) e``, ``rho = face_coupling``, ``M`` a fixed
  matrix with orthonormal rows and ``e ~ N(0, I_5)``: at ``rho = 0`` the face is
  independent of the rest of the head, at ``rho = 1`` it is determined by it;
* a **soft-tissue** thickness factor ``s ~ N(0, 1)`` that thickens the face
  (and, by ``soft_tissue_scalp_fraction``, the scalp) along the outward normal
  and drives the simulated CT muscle radiodensity;
* **pose and scale** (sex shifts the scale), then **intensity** scale, a smooth
  multiplicative bias field and Rician noise. An external site adds a contrast
  change (gamma), more noise and thicker slices, stored in LPS orientation.

Muscle radiodensity (HU) of muscle ``m``:
``HU_m = mu_m + sd_m (a_m s + b_age z_age + b_sex male + sqrt(1 - a_m^2) e_m)``.

Subject ``i`` depends only on ``(seed, i)`` and the parameters, so the seed
reproduces a subject bit for bit whatever the cohort size.

Two reference scans of every test subject are written as ground truth:

* the **oracle**: the same head with its face latents replaced by their
  expectation given the cranial latents, ``E[f | c] = rho M c`` (and the
  soft-tissue factor by its expectation given what defacing leaves: itself when
  ``soft_tissue_scalp_fraction > 0``, else 0), with the same pose, intensity,
  bias and noise draw: the best face any refacing model can predict from the
  defaced image;
* the **retest**: the same image re-acquired with another noise draw, the
  test-retest floor of any face distance.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from refacelib._utils.io import atomic_path, atomic_write_text, save_nifti, save_table
from refacelib._utils.parallel import worker_pool
from refacelib.data.template import Template

__all__ = [
    "PhantomParams",
    "FACE_COMPONENTS",
    "MUSCLES",
    "PhantomBasis",
    "build_basis",
    "sample_latents",
    "generate_subject",
    "oracle_latents",
    "retest_seed",
    "generate_with_references",
    "pose_affine",
    "template_positions",
    "stored_image",
    "write_cohort",
    "face_normal_sd",
    "REFERENCE_FACE_SD_MM",
    "COHORT_VERSION",
]

FACE_COMPONENTS = ("nose", "lips", "chin", "cheeks", "brow")
MUSCLES = ("abdomen", "thigh", "shin")
SPLITS = ("train", "val", "test_internal", "test_external")
# Version of what a written cohort contains. It is a field of PhantomParams, so it
# enters the cache key of the cohort folder (refacelib.pipeline.cohort.phantom_folder): bump it
# whenever the files written change, so that an older cohort is not reused.
COHORT_VERSION = 2


@dataclass
class PhantomParams:
    """Every knob of the generative model (defaults: the ``quick`` profile)."""

    seed: int = 2025
    voxel_mm: float = 2.0
    n_train: int = 60
    n_val: int = 6
    n_test_internal: int = 15
    n_test_external: int = 20
    face_coupling: float = 0.8
    cranial_basis: int = 8
    cranial_amplitude_mm: float = 4.0
    cranial_smoothness_mm: float = 30.0
    # broad modes (like the leading components of 3D face-shape models: facial width first),
    # sized so that, with the soft tissue, the pointwise SD of the face surface spans 0 to
    # >= 3 mm as measured in adults by Schutte et al. 2023 (see book/phantom.md)
    face_amplitude_mm: float = 4.0
    face_bump_mm: float = 18.0
    soft_tissue_mm: float = 1.5
    soft_tissue_scalp_fraction: float = 0.3
    rotation_deg: float = 3.0
    translation_mm: float = 3.0
    scale_sd: float = 0.02
    sex_scale: float = 0.02
    age_range: tuple = (55.0, 90.0)
    intensity_sd: float = 0.1
    bias_strength: float = 0.15
    noise_sd: float = 0.02
    external_gamma: float = 0.8
    external_noise_factor: float = 2.0
    external_slice_factor: float = 1.5
    muscle_coupling: dict = field(default_factory=lambda: {"abdomen": 0.6, "thigh": 0.7, "shin": 0.5})
    muscle_mean_hu: dict = field(default_factory=lambda: {"abdomen": 40.0, "thigh": 50.0, "shin": 55.0})
    muscle_sd_hu: dict = field(default_factory=lambda: {"abdomen": 8.0, "thigh": 6.0, "shin": 5.0})
    muscle_age_effect: float = -0.4
    muscle_sex_effect: float = 0.5
    # not a knob: the version of the written cohort, part of the cache key (see COHORT_VERSION)
    version: int = field(default=COHORT_VERSION, init=False)

    @classmethod
    def from_dict(cls, values: dict | None) -> "PhantomParams":
        """Build from a profile's ``phantom`` section; unknown keys are an error."""
        values = dict(values or {})
        known = {name for name, f in cls.__dataclass_fields__.items() if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown phantom parameter(s): {', '.join(unknown)}")
        out = cls(**values)
        if not 0.0 <= out.face_coupling <= 1.0:
            raise ValueError(f"face_coupling must be in [0, 1], got {out.face_coupling}")
        return out

    @property
    def n_subjects(self) -> int:
        return self.n_train + self.n_val + self.n_test_internal + self.n_test_external

    def split_of(self, index: int) -> str:
        bounds = np.cumsum([self.n_train, self.n_val, self.n_test_internal, self.n_test_external])
        return SPLITS[int(np.searchsorted(bounds, index, side="right"))]


@dataclass
class PhantomBasis:
    """Fields shared by every subject of a cohort (deterministic from the seed)."""

    template: Template
    cranial: np.ndarray  # (K, 3, X, Y, Z) unit-RMS smooth fields, zero on the face
    face: np.ndarray  # (5, 3, X, Y, Z) component displacement fields, peak 1
    normal: np.ndarray  # (3, X, Y, Z) outward unit normal near the head surface
    face_weight: np.ndarray  # (X, Y, Z) smooth face weight in [0, 1]
    coupling_matrix: np.ndarray  # (5, K), orthonormal rows


def _smooth_field(rng, shape, sigma_vox, coarse: int = 4) -> np.ndarray:
    """Smoothed white noise, made on a grid ``coarse`` times coarser, then upsampled."""
    small = tuple(int(np.ceil(n / coarse)) + 1 for n in shape)
    out = []
    for _ in range(3):
        f = ndimage.gaussian_filter(rng.standard_normal(small), sigma_vox / coarse, mode="wrap")
        f = ndimage.zoom(f, [n / m for n, m in zip(shape, small)], order=1, grid_mode=True, mode="nearest")
        out.append(f[tuple(slice(0, n) for n in shape)])
    return np.stack(out).astype(np.float32)


def _bump(shape, affine, centre, direction, sigma_mm) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    world = (affine[:3, :3] @ grid + affine[:3, 3:4]).reshape((3, *shape))
    d2 = sum((world[i] - centre[i]) ** 2 for i in range(3))
    weight = np.exp(-0.5 * d2 / sigma_mm**2).astype(np.float32)
    direction = np.asarray(direction, np.float32) / np.linalg.norm(direction)
    return direction[:, None, None, None] * weight[None]


def _face_fields(template: Template, sigma_mm: float) -> np.ndarray:
    lm, shape, aff = template.landmarks, template.shape, template.affine
    nose = _bump(shape, aff, lm["nose"], (0, 1, 0), sigma_mm)
    lips = _bump(shape, aff, lm["lips"], (0, 1, 0), sigma_mm * 0.8)
    chin = _bump(shape, aff, lm["chin"], (0, 1, -1), sigma_mm * 1.2)
    cheeks = _bump(shape, aff, lm["cheek_right"], (1, 0.3, 0), sigma_mm) + _bump(
        shape, aff, lm["cheek_left"], (-1, 0.3, 0), sigma_mm
    )
    brow = _bump(shape, aff, lm["brow"], (0, 1, 0.2), sigma_mm * 1.3)
    return np.stack([nose, lips, chin, cheeks, brow])


#: The face weight rises from 0 to 1 between these distances (mm) from the rest of the head.
FACE_WEIGHT_RAMP_MM = (2.0, 12.0)


def _face_weight(template: Template) -> np.ndarray:
    """Smooth weight in [0, 1]: 0 on the head outside pydeface's face region, 1 deep inside it.

    A smoothstep of the distance (mm) from the nearest head voxel outside the face
    region over :data:`FACE_WEIGHT_RAMP_MM`, so a face deformation moves no voxel of
    the rest of the head: what a defaced image keeps carries nothing of the face latents.
    In the air in front of the face the weight is 1, so the skin can move outward.
    """
    rest = template.head & ~template.face
    if not rest.any():
        return np.ones(template.shape, np.float32)
    d = ndimage.distance_transform_edt(~rest) * template.voxel_mm
    lo, hi = FACE_WEIGHT_RAMP_MM
    t = np.clip((d - lo) / (hi - lo), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


#: Point-wise SD (mm) of adult face surfaces around their average face, as reported by
#: Schutte et al. 2023 (3D photographs, Dutch adults): from 0 to 3 mm and more.
REFERENCE_FACE_SD_MM = (0.0, 3.0)


def face_normal_sd(basis: "PhantomBasis", params: PhantomParams) -> np.ndarray:
    """Point-wise SD (mm) of the skin's displacement along its normal, on the face's skin voxels.

    The face components and the soft-tissue factor are independent with unit
    variance, so the SD at a voxel is ``sqrt(sum_j (a_f F_j . n)^2 + (a_s t)^2)``
    with ``t`` the soft-tissue weight. The skin is the template's face region
    within one voxel of the head's surface. Returns one value per skin voxel.
    """
    tpl = basis.template
    skin = tpl.face & ~ndimage.binary_erosion(tpl.head)
    normal = basis.normal[:, skin]
    comps = np.einsum("jcv,cv->jv", basis.face[:, :, skin], normal) * params.face_amplitude_mm
    tissue = basis.face_weight[skin] + params.soft_tissue_scalp_fraction * (1.0 - basis.face_weight[skin])
    return np.sqrt((comps ** 2).sum(0) + (params.soft_tissue_mm * tissue) ** 2)


def build_basis(template: Template, params: PhantomParams) -> PhantomBasis:
    """Precompute the cohort-wide fields of the generative model."""
    rng = np.random.default_rng([params.seed, 0xBA515])
    vox = template.voxel_mm
    face_weight = _face_weight(template)
    head = template.head
    cranial = []
    for _ in range(params.cranial_basis):
        f = _smooth_field(rng, template.shape, params.cranial_smoothness_mm / vox)
        rms = np.sqrt(np.mean(np.sum(f[:, head] ** 2, axis=0)))
        # each field has RMS 1/sqrt(K) on the head: the sum has RMS 1 for c ~ N(0, I)
        cranial.append(f / (rms * np.sqrt(params.cranial_basis)) * (1.0 - face_weight)[None])
    smooth_head = ndimage.gaussian_filter(head.astype(np.float32), 2.0 / vox)
    grad = np.stack(np.gradient(smooth_head))
    normal = -grad / (np.linalg.norm(grad, axis=0, keepdims=True) + 1e-3)
    k = max(params.cranial_basis, len(FACE_COMPONENTS))
    q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return PhantomBasis(
        template=template,
        cranial=np.stack(cranial) if cranial else np.zeros((0, 3, *template.shape), np.float32),
        face=_face_fields(template, params.face_bump_mm) * face_weight[None, None],
        normal=normal.astype(np.float32),
        face_weight=face_weight.astype(np.float32),
        coupling_matrix=q[: len(FACE_COMPONENTS), : params.cranial_basis],
    )


def sample_latents(index: int, params: PhantomParams, coupling_matrix: np.ndarray) -> dict:
    """Latent variables of subject ``index`` (depends only on seed and index)."""
    rng = np.random.default_rng([params.seed, index])
    c = rng.standard_normal(params.cranial_basis)
    e = rng.standard_normal(len(FACE_COMPONENTS))
    rho = params.face_coupling
    driven = coupling_matrix @ c if params.cranial_basis else np.zeros(len(FACE_COMPONENTS))
    f = rho * driven + np.sqrt(1.0 - rho**2) * e
    sex = "M" if rng.random() < 0.5 else "F"
    age = float(rng.uniform(*params.age_range))
    latents = {
        "cranial": c,
        "face": f,
        "soft_tissue": float(rng.standard_normal()),
        "sex": sex,
        "age": round(age, 1),
        "rotation_deg": rng.normal(0, params.rotation_deg, 3),
        "translation_mm": rng.normal(0, params.translation_mm, 3),
        "scale": float(np.exp(rng.normal(0, params.scale_sd) + params.sex_scale * (1 if sex == "M" else -1))),
        "intensity": float(np.exp(rng.normal(0, params.intensity_sd))),
        "bias": rng.normal(0, params.bias_strength, 3),
        "muscle_noise": rng.standard_normal(len(MUSCLES)),
        "noise_seed": int(rng.integers(2**31)),
    }
    return latents


def muscle_hu(latents: dict, params: PhantomParams) -> dict:
    """Simulated CT muscle radiodensity (HU) from soft tissue, age, sex and noise."""
    z_age = (latents["age"] - np.mean(params.age_range)) / (np.ptp(params.age_range) / np.sqrt(12))
    male = 1.0 if latents["sex"] == "M" else 0.0
    out = {}
    for i, m in enumerate(MUSCLES):
        a = params.muscle_coupling[m]
        z = a * latents["soft_tissue"] + params.muscle_age_effect * z_age + params.muscle_sex_effect * male
        z += np.sqrt(max(1.0 - a**2, 0.0)) * latents["muscle_noise"][i]
        out[m] = round(float(params.muscle_mean_hu[m] + params.muscle_sd_hu[m] * z), 2)
    return out


def _rotation(deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _displacement(basis: PhantomBasis, latents: dict, params: PhantomParams) -> np.ndarray:
    u = np.zeros((3, *basis.template.shape), np.float32)
    for ck, field in zip(latents["cranial"], basis.cranial):
        u += np.float32(params.cranial_amplitude_mm * ck) * field
    for fj, field in zip(latents["face"], basis.face):
        u += np.float32(params.face_amplitude_mm * fj) * field
    tissue = basis.face_weight + params.soft_tissue_scalp_fraction * (1.0 - basis.face_weight)
    u += np.float32(params.soft_tissue_mm * latents["soft_tissue"]) * tissue[None] * basis.normal
    return u


def _pose_coords(tpl: Template, latents: dict) -> np.ndarray:
    """Template voxel coordinates (3, N) of each output voxel under the pose alone."""
    centre = tpl.affine[:3, :3] @ (np.array(tpl.shape) / 2.0) + tpl.affine[:3, 3]
    pose = _rotation(latents["rotation_deg"]) * latents["scale"]
    grid = np.indices(tpl.shape, dtype=np.float32).reshape(3, -1)
    world = tpl.affine[:3, :3] @ grid + tpl.affine[:3, 3:4]
    src_world = np.linalg.inv(pose) @ (world - centre[:, None] - latents["translation_mm"][:, None]) + centre[:, None]
    inv = np.linalg.inv(tpl.affine)
    return inv[:3, :3] @ src_world + inv[:3, 3:4]


def pose_affine(latents: dict, template: Template) -> np.ndarray:
    """The true affine part of a subject's geometry: template world -> subject world (RAS mm, 4x4).

    A subject is drawn on the template's grid by a backward warp
    (:func:`_source_coords`): the output voxel at world point ``w`` shows the
    template at ``x = y - u(y)`` with ``y = A^-1 w`` and
    ``A x = s R (x - c) + c + t`` (``R``: :func:`_rotation` of ``rotation_deg``,
    ``s``: ``scale``, ``t``: ``translation_mm``, ``c``: the centre of the template
    grid ``template``, which must be the cohort's). This returns ``A``, the pose
    and scale alone. Not included: ``u`` (:func:`_displacement`: the cranial,
    face and soft-tissue deformations, smooth and not affine, so no affine
    registration reproduces it; its best affine fit may also differ from ``A``),
    and intensity, bias and noise, which move nothing. The external site's
    storage (:func:`_thick_slices`: thicker slices, LPS) changes the voxel grid
    but not world coordinates, so ``A`` holds for either site and after
    resampling to any grid. :func:`template_positions` is the whole map, ``u``
    included; measured against it, the non-affine part of ``u`` sets a floor
    under the error of any affine registration
    (:func:`refacelib.bench.registration.deformation_floor`).

    Examples
    --------
    >>> tpl = Template(np.zeros((4, 4, 4)), *(np.zeros((4, 4, 4), bool),) * 3, np.eye(4), {})
    >>> lat = {"rotation_deg": np.zeros(3), "translation_mm": np.array([1.0, 2.0, 3.0]), "scale": 2.0}
    >>> pose_affine(lat, tpl)[:3].tolist()  # centre (2, 2, 2): x -> 2 (x - 2) + 2 + t
    [[2.0, 0.0, 0.0, -1.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0]]
    """
    centre = template.affine[:3, :3] @ (np.array(template.shape) / 2.0) + template.affine[:3, 3]
    pose = _rotation(latents["rotation_deg"]) * latents["scale"]
    out = np.eye(4)
    out[:3, :3] = pose
    out[:3, 3] = centre + np.asarray(latents["translation_mm"], float) - pose @ centre
    return out


def template_positions(points: np.ndarray, basis: PhantomBasis, params: PhantomParams, latents: dict, *,
                       iterations: int = 30, tolerance_mm: float = 0.01) -> np.ndarray:
    """Where a subject shows template points ``(N, 3)`` (world mm), deformation included: ``A y``.

    Solves ``y - u(y) = x`` by the fixed point ``y <- x + u(y)``, ``u`` interpolated
    as the generator does; ``A`` is :func:`pose_affine`. Intensity, bias and noise
    play no part. Where the deformation is steep (its gradient nears 1 in places)
    the backward warp may fold, and a template point has no single position in
    the subject: it shows at two places (one is returned) or the iteration does
    not settle (NaN: a point whose equation is still off by more than
    ``tolerance_mm`` after ``iterations`` steps).
    """
    tpl = basis.template
    u = _displacement(basis, latents, params)
    inv = np.linalg.inv(tpl.affine)
    x = np.asarray(points, float)

    def u_at(y):
        vox = (inv[:3, :3] @ y.T + inv[:3, 3:4]).astype(np.float32)
        return np.stack([ndimage.map_coordinates(u[i], vox, order=1, mode="nearest") for i in range(3)], 1)

    y = x.copy()
    for _ in range(iterations):
        y = x + u_at(y)
    y[np.linalg.norm(y - u_at(y) - x, axis=1) > tolerance_mm] = np.nan
    pose = pose_affine(latents, tpl)
    return y @ pose[:3, :3].T + pose[:3, 3]


def _source_coords(basis: PhantomBasis, latents: dict, params: PhantomParams) -> np.ndarray:
    """Template voxel coordinates sampled by each output voxel (backward warp)."""
    tpl = basis.template
    inv = np.linalg.inv(tpl.affine)
    src_vox = _pose_coords(tpl, latents)
    u = _displacement(basis, latents, params)
    u_at = np.stack([ndimage.map_coordinates(u[i], src_vox, order=1, mode="nearest") for i in range(3)])
    return (src_vox - (inv[:3, :3] @ u_at)).reshape((3, *tpl.shape))


def _bias_field(shape, bias) -> np.ndarray:
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.exp(bias[0] * x + bias[1] * y + bias[2] * z).astype(np.float32)


def oracle_latents(latents: dict, params: PhantomParams, coupling_matrix: np.ndarray) -> dict:
    """The oracle's latents: what defacing leaves predicts of the face, as keyword overrides.

    ``face_latents`` is ``E[f | c] = rho M c`` (zero at ``face_coupling`` 0: the
    mean face; ``f`` itself at 1). ``soft_tissue`` is ``E[s | defaced image]``:
    ``s`` when it thickens the scalp too (``soft_tissue_scalp_fraction > 0``),
    else its mean, 0. Pass them to :func:`generate_subject`.

    Examples
    --------
    >>> p = PhantomParams(cranial_basis=5, face_coupling=0.0, soft_tissue_scalp_fraction=0.0)
    >>> lat = sample_latents(0, p, np.eye(5))
    >>> o = oracle_latents(lat, p, np.eye(5))
    >>> bool(np.all(o["face_latents"] == 0)), o["soft_tissue"]
    (True, 0.0)
    """
    rho = params.face_coupling
    driven = coupling_matrix @ latents["cranial"] if params.cranial_basis else np.zeros(len(FACE_COMPONENTS))
    soft = latents["soft_tissue"] if params.soft_tissue_scalp_fraction > 0 else 0.0
    return {"face_latents": rho * driven + 0.0, "soft_tissue": float(soft)}  # + 0.0: no negative zeros


def retest_seed(index: int, params: PhantomParams) -> int:
    """Noise seed of subject ``index``'s retest scan (depends only on seed and index)."""
    return int(np.random.default_rng([params.seed, index, 0x7E57]).integers(2**31))


def _site(index: int, params: PhantomParams) -> str:
    return "site-B" if params.split_of(index) == "test_external" else "site-A"


def _render(index: int, basis: PhantomBasis, params: PhantomParams, latents: dict, *, masks: bool = True):
    """Warp, then image (intensity, bias, site contrast): the noise-free image, its noise SD, the masks."""
    tpl = basis.template
    coords = _source_coords(basis, latents, params)
    image = ndimage.map_coordinates(tpl.data, coords, order=1, mode="constant", cval=0.0)
    brain = face = None
    if masks:
        brain = ndimage.map_coordinates(tpl.brain, coords, order=0, mode="constant").astype(bool)
        face = ndimage.map_coordinates(tpl.face, coords, order=0, mode="constant").astype(bool)
    site = _site(index, params)
    image = image * latents["intensity"] * _bias_field(tpl.shape, latents["bias"])
    ref = float(np.percentile(tpl.data[tpl.head], 95))
    if site == "site-B":
        image = ref * np.clip(image / ref, 0, None) ** params.external_gamma
    sigma = params.noise_sd * ref * (params.external_noise_factor if site == "site-B" else 1.0)
    return image, sigma, brain, face


def _rician(image: np.ndarray, sigma: float, noise_seed: int) -> np.ndarray:
    noise = np.random.default_rng(noise_seed).standard_normal((2, *image.shape)).astype(np.float32)
    return np.sqrt((image + sigma * noise[0]) ** 2 + (sigma * noise[1]) ** 2).astype(np.float32)


def _subject_latents(index, params, coupling_matrix, face_latents=None, soft_tissue=None, noise_seed=None):
    latents = sample_latents(index, params, coupling_matrix)
    muscle = muscle_hu(latents, params)  # the subject's body: overrides change the head image only
    if face_latents is not None:
        face = np.asarray(face_latents, dtype=float)
        if face.shape != (len(FACE_COMPONENTS),):
            raise ValueError(f"face_latents must have shape ({len(FACE_COMPONENTS)},), got {face.shape}")
        latents["face"] = face
    if soft_tissue is not None:
        latents["soft_tissue"] = float(soft_tissue)
    if noise_seed is not None:
        latents["noise_seed"] = int(noise_seed)
    return latents, muscle


def generate_subject(index: int, basis: PhantomBasis, params: PhantomParams, *,
                     face_latents=None, soft_tissue: float | None = None, noise_seed: int | None = None) -> dict:
    """One subject: image (float32), brain and face masks, affine, latents, muscle.

    The image is on the template grid (RAS, ``voxel_mm``); the external-site
    resampling to thick slices happens in :func:`write_cohort`.

    The keywords regenerate subject ``index`` with some latents replaced and
    everything else identical (pose, intensity, bias, and the noise draw unless
    ``noise_seed`` is given): ``face_latents`` (5 values, e.g. the oracle's,
    :func:`oracle_latents`), ``soft_tissue``, ``noise_seed`` (e.g.
    :func:`retest_seed`). The returned latents show the replacements; ``muscle``
    stays the subject's.
    """
    latents, muscle = _subject_latents(index, params, basis.coupling_matrix, face_latents, soft_tissue, noise_seed)
    image, sigma, brain, face = _render(index, basis, params, latents)
    return {
        "participant_id": f"sub-{index + 1:03d}",
        "image": _rician(image, sigma, latents["noise_seed"]),
        "brain": brain,
        "face": face,
        "affine": basis.template.affine.copy(),
        "latents": latents,
        "muscle": muscle,
        "site": _site(index, params),
        "split": params.split_of(index),
    }


def generate_with_references(index: int, basis: PhantomBasis, params: PhantomParams) -> dict:
    """:func:`generate_subject` plus its reference scans, float32 on the same grid.

    ``oracle``: the head with the oracle's latents (:func:`oracle_latents`), same
    pose, imaging and noise draw; ``retest``: the subject's noise-free image with
    another noise draw (:func:`retest_seed`). Equal bit for bit to
    ``generate_subject(index, basis, params, **oracle_latents(...))["image"]`` and
    ``generate_subject(index, basis, params, noise_seed=retest_seed(index, params))["image"]``,
    but the retest reuses the subject's warp.
    """
    latents, muscle = _subject_latents(index, params, basis.coupling_matrix)
    clean, sigma, brain, face = _render(index, basis, params, latents)
    overrides = oracle_latents(latents, params, basis.coupling_matrix)
    oracle, _ = _subject_latents(index, params, basis.coupling_matrix, **overrides)
    oracle_clean, _, _, _ = _render(index, basis, params, oracle, masks=False)  # its own warp
    return {
        "participant_id": f"sub-{index + 1:03d}",
        "image": _rician(clean, sigma, latents["noise_seed"]),
        "oracle": _rician(oracle_clean, sigma, latents["noise_seed"]),
        "retest": _rician(clean, sigma, retest_seed(index, params)),
        "brain": brain,
        "face": face,
        "affine": basis.template.affine.copy(),
        "latents": latents,
        "oracle_latents": overrides,
        "muscle": muscle,
        "site": _site(index, params),
        "split": params.split_of(index),
    }


def _thick_slices(image: np.ndarray, affine: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Simulate thicker axial slices, then store in LPS orientation (site B)."""
    if factor > 1.0:
        blurred = ndimage.gaussian_filter1d(image, sigma=0.5 * factor, axis=2)
        nz = max(2, int(round(image.shape[2] / factor)))
        zoom = image.shape[2] / nz
        idx = (np.arange(nz) + 0.5) * zoom - 0.5
        image = ndimage.map_coordinates(
            blurred, np.meshgrid(*[np.arange(n) for n in image.shape[:2]], idx, indexing="ij"), order=1
        )
        affine = affine.copy()
        affine[:3, 3] += affine[:3, 2] * (zoom - 1) / 2.0
        affine[:3, 2] *= zoom
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [image.shape[0] - 1, image.shape[1] - 1, 0]
    return image[::-1, ::-1, :].copy(), affine @ flip


def _latent_row(subject: dict) -> dict:
    lat = subject["latents"]
    row = {"participant_id": subject["participant_id"], "soft_tissue": lat["soft_tissue"], "scale": lat["scale"]}
    row.update({f"cranial_{k}": v for k, v in enumerate(lat["cranial"])})
    row.update({f"face_{n}": v for n, v in zip(FACE_COMPONENTS, lat["face"])})
    return row


def stored_image(s: dict, image: np.ndarray, params: PhantomParams) -> nib.Nifti1Image:
    """An image of subject ``s`` as its site stores it (site B: thick slices, LPS)."""
    affine = s["affine"]
    if s["site"] == "site-B":
        image, affine = _thick_slices(image, affine, params.external_slice_factor)
    return nib.Nifti1Image(image.astype(np.float32), affine)


def _write_subject(folder: Path, s: dict, params: PhantomParams) -> None:
    sid = s["participant_id"]
    deriv = folder / "derivatives" / "phantom" / sid / "anat"
    for name in ("brain", "face"):
        save_nifti(nib.Nifti1Image(s[name].astype(np.uint8), s["affine"]), deriv / f"{sid}_desc-{name}_mask.nii.gz")
    for name in ("oracle", "retest"):  # test subjects: the reference scans, on the T1w's grid
        if name in s:
            save_nifti(stored_image(s, s[name], params), deriv / f"{sid}_desc-{name}_T1w.nii.gz")
    # the image last: its presence marks the subject as complete
    save_nifti(stored_image(s, s["image"], params), folder / sid / "anat" / f"{sid}_T1w.nii.gz")


#: The arrays of a :class:`PhantomBasis` that :func:`write_cohort` hands to its workers as memory maps.
_BASIS_ARRAYS = ("cranial", "face", "normal", "face_weight", "coupling_matrix")
#: Per worker process: the basis last read from a spilled folder (folder name -> basis).
_SPILLED: dict[str, PhantomBasis] = {}


def _spilled_basis(spill: str, template: Template) -> PhantomBasis:
    """The basis spilled to ``spill`` by :func:`write_cohort`, read once per process as memory maps."""
    if spill not in _SPILLED:
        _SPILLED.clear()
        arrays = {name: np.load(Path(spill) / f"{name}.npy", mmap_mode="r") for name in _BASIS_ARRAYS}
        _SPILLED[spill] = PhantomBasis(template=template, **arrays)
    return _SPILLED[spill]


def _cohort_subject(folder: Path, index: int, template: Template, spill: str, params: PhantomParams) -> tuple[dict, dict]:
    """Write subject ``index`` of the cohort (unless an earlier run did) and return its
    ``participants.tsv`` and ``latents.csv`` rows; the basis is read from ``spill``."""
    basis = _spilled_basis(spill, template)
    sid = f"sub-{index + 1:03d}"
    t1w = folder / sid / "anat" / f"{sid}_T1w.nii.gz"
    if t1w.exists():  # written by an earlier, interrupted run: only the latents are needed
        s = {"participant_id": sid, "latents": sample_latents(index, params, basis.coupling_matrix),
             "split": params.split_of(index)}
        s["muscle"] = muscle_hu(s["latents"], params)
        s["site"] = "site-B" if s["split"] == "test_external" else "site-A"
    elif params.split_of(index).startswith("test"):  # with its oracle and retest scans
        s = generate_with_references(index, basis, params)
        _write_subject(folder, s, params)
    else:
        s = generate_subject(index, basis, params)
        _write_subject(folder, s, params)
    row = {"participant_id": sid, "age": s["latents"]["age"], "sex": s["latents"]["sex"],
           "site": s["site"], "split": s["split"], **{f"muscle_hu_{m}": v for m, v in s["muscle"].items()}}
    return row, _latent_row(s)


def write_cohort(folder: Path, basis: PhantomBasis, params: PhantomParams, *, progress: bool = True,
                 n_jobs: int | None = None) -> Path:
    """Write the cohort as a BIDS-style folder; ground truth under ``derivatives/phantom``.

    Each test subject also gets ``derivatives/phantom/<sid>/anat/<sid>_desc-oracle_T1w.nii.gz``
    and ``<sid>_desc-retest_T1w.nii.gz`` (:func:`generate_with_references`), stored
    like its T1w (same grid, orientation and, at site B, thick slices).

    Subjects are generated in ``n_jobs`` worker processes
    (:func:`refacelib._utils.parallel.worker_pool`; default: the usable CPUs, at most 8).
    Each subject is a function of its index alone, so the files are the same bit for bit
    whatever the number of workers. The basis reaches every subject (in a worker or, with
    one job, in this process) as memory-mapped ``.npy`` files in a temporary folder beside
    ``folder`` (hundreds of MB: pickling it for every subject would cost more than
    generating the subject), removed at the end.

    Subjects already on disk (from an interrupted run) are kept; the tables
    and ``dataset_description.json`` are written last, so their presence
    marks a complete cohort.
    """
    import shutil
    import tempfile

    from joblib import delayed
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    deriv = folder / "derivatives" / "phantom"
    spill = tempfile.mkdtemp(prefix=".phantom-basis-", dir=folder.parent)
    try:
        for name in _BASIS_ARRAYS:
            np.save(Path(spill) / f"{name}.npy", np.asarray(getattr(basis, name)))
        with worker_pool(n_jobs, return_as="generator") as workers:
            tasks = (delayed(_cohort_subject)(folder, i, basis.template, spill, params)
                     for i in range(params.n_subjects))
            results = list(tqdm(workers(tasks), total=params.n_subjects, desc="phantom subjects",
                                disable=not progress))
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    rows = [row for row, _ in results]
    latent_rows = [latent for _, latent in results]
    save_table(pd.DataFrame(latent_rows), deriv / "latents.csv")
    atomic_write_text(deriv / "README.txt", "Ground truth of the phantom: for validation only; no model or method reads it.\n")
    with atomic_path(folder / "participants.tsv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, sep="\t", index=False)
    desc = {"Name": "refacelib phantom cohort (simulated)", "BIDSVersion": "1.8.0",
            "DatasetType": "raw", "GeneratedBy": [{"Name": "refacelib.phantom"}],
            "PhantomParameters": asdict(params)}
    atomic_write_text(folder / "dataset_description.json", json.dumps(desc, indent=2, default=list))
    return folder
