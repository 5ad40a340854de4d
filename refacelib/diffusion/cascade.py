"""Cascaded 3D diffusion model that puts back the face removed by defacing.

Two stages share one design, built on MONAI's ``DiffusionModelUNet`` and its
schedulers:

* **Stage 1** works on the whole head, downsampled by ``factor`` (average
  pooling for images; max pooling for the removal mask, so a coarse voxel is
  "removed" when any of its fine voxels is). Input channels: ``x_t``, the
  defaced image, the mask (3).
* **Stage 2** works at full resolution inside the face box. Input channels:
  ``x_t``, defaced crop, mask crop, the upsampled stage-1 estimate crop (4).

Both stages predict the clean image ("sample" prediction) as a *residual over a
prior*, the population-average head scaled to the subject's intensity:
``x0_hat = prior + net(...)``. MONAI zero-initialises the last convolution, so an
untrained network returns the prior exactly and training only learns the
subject-specific part. Noise is only ever added inside the removal mask; the
known voxels of ``x_t`` are the clean defaced voxels, both in training and in
sampling (see :mod:`refacelib.diffusion.sample`).

Examples
--------
>>> cfg = CascadeConfig.from_dict({"stage1": {"channels": [4, 8]}, "factor": 2})
>>> cfg.stage1.channels, cfg.stage1.multiple
((4, 8), 2)
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

__all__ = [
    "LOSS_WEIGHTINGS",
    "PREDICTIONS",
    "STAGE_IN_CHANNELS",
    "StageConfig",
    "CascadeConfig",
    "face_box",
    "box_slices",
    "pad_to_multiple",
    "unpad",
    "downsample",
    "downsample_mask",
    "upsample",
    "make_unet",
    "make_scheduler",
    "as_volume_tensor",
    "stage1_inputs",
    "stage2_inputs",
    "stage1_to_full",
    "conditioning",
    "predict_x0",
    "noise_in_mask",
]

STAGE_IN_CHANNELS = {1: 3, 2: 4}


def _from_dict(cls, data):
    """An instance of the dataclass ``cls`` from a plain dict (or itself), refusing unknown keys."""
    if isinstance(data, cls):
        return data
    data = dict(data or {})
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**data)


#: Values of ``StageConfig.loss_weighting``.
LOSS_WEIGHTINGS = ("uniform", "min_snr")

#: Values of ``StageConfig.prediction``: what the network outputs.
PREDICTIONS = ("x0", "v")


@dataclass
class StageConfig:
    """Network, noise schedule and training settings of one cascade stage.

    Attributes
    ----------
    channels : tuple of int
        Feature channels per UNet level; ``len(channels)`` levels.
    num_res_blocks : int
        Residual blocks per level.
    norm_num_groups : int
        Group-norm groups; must divide every channel count.
    train_timesteps : int
        Diffusion steps of the training noise schedule.
    beta_schedule : str
        MONAI noise schedule name (``"scaled_linear_beta"``, ``"linear_beta"``,
        ``"cosine"`` ...); for short test schedules
        prefer ``"cosine"``, whose last step is pure noise at any length.
    lr : float
        AdamW learning rate (1e-3 drifted in the probe; 2e-4 is stable).
    steps : int
        Total optimiser steps.
    batch_size : int
        Examples per step (per process under ``torchrun``).
    ema_decay : float
        Decay of the exponential moving average of the weights (with warm-up).
    cond_noise : float
        Standard deviation of the Gaussian conditioning augmentation added to
        the ground-truth coarse image when stage 2 trains without stage-1
        outputs.
    loss_weighting : {"uniform", "min_snr"}
        Weight of each example's masked x0 loss over timesteps: ``uniform`` (every
        timestep alike), or ``min_snr``, Min-SNR-gamma (Hang et al., ICCV 2023):
        ``min(SNR(t), snr_gamma)`` for an x0 target, which caps the weight of the
        nearly clean timesteps and lowers that of the noisiest ones.
    snr_gamma : float
        The cap of ``min_snr``.
    prediction : {"x0", "v"}
        What the network outputs: ``x0``, the residual of the clean image over the
        prior; or ``v`` (Salimans & Ho, ICLR 2022), the velocity of that residual,
        ``v = sqrt(abar) eps - sqrt(1 - abar) (x0 - prior)``, trained on the v loss
        (the masked x0 loss times ``1 + SNR(t)``; ``min_snr`` replaces that weight).
        Sampling always reads the clean-image estimate (:func:`predict_x0`).
    """

    channels: tuple[int, ...] = (8, 16, 32)
    num_res_blocks: int = 1
    norm_num_groups: int = 4
    train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear_beta"
    lr: float = 2e-4
    steps: int = 300
    batch_size: int = 4
    ema_decay: float = 0.995
    cond_noise: float = 0.02
    loss_weighting: str = "uniform"
    snr_gamma: float = 5.0
    prediction: str = "x0"

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if not self.snr_gamma > 0:
            raise ValueError(f"snr_gamma must be positive, got {self.snr_gamma}")
        bad = [c for c in self.channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} does not divide channels {bad}")

    @property
    def multiple(self) -> int:
        """Spatial sizes must be divisible by this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.channels) - 1)

    @classmethod
    def from_dict(cls, data: dict | "StageConfig" | None) -> "StageConfig":
        """Build from a plain dict, refusing unknown keys."""
        return _from_dict(cls, data)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists).

        The loss-weighting and prediction fields appear only when they differ from their
        defaults: they came after checkpoints were shipped, whose names are hashes of this dict.

        Examples
        --------
        >>> "loss_weighting" in StageConfig().to_dict(), StageConfig(loss_weighting="min_snr").to_dict()["snr_gamma"]
        (False, 5.0)
        >>> "prediction" in StageConfig().to_dict(), StageConfig(prediction="v").to_dict()["prediction"]
        (False, 'v')
        """
        out = dataclasses.asdict(self)
        out["channels"] = list(self.channels)
        if self.loss_weighting == "uniform" and self.snr_gamma == 5.0:
            del out["loss_weighting"], out["snr_gamma"]
        if self.prediction == "x0":
            del out["prediction"]
        return out


@dataclass
class CascadeConfig:
    """The whole cascade: two stages, the coarse factor and the face box.

    Attributes
    ----------
    stage1, stage2 : StageConfig
        Settings of the coarse (whole head) and fine (face box) stages.
    factor : int
        Stage 1 works on the common grid downsampled by this integer factor.
    box : tuple of (lo, hi) or None
        Stage-2 crop on the common grid, ``((x0, x1), (y0, y1), (z0, z1))``;
        see :func:`face_box`. None means the whole grid.
    per_method : bool
        Must be False: the cascade is one model for every defacing method,
        conditioned on each example's removal mask. One model per method is
        not implemented; True is refused rather than silently ignored. The
        field stays in :meth:`to_dict` because the names of shipped
        checkpoints are hashes of that dict.
    seed : int
        Seed of every random draw during training.
    """

    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig)
    factor: int = 2
    box: tuple[tuple[int, int], ...] | None = None
    per_method: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.stage1 = StageConfig.from_dict(self.stage1)
        self.stage2 = StageConfig.from_dict(self.stage2)
        self.factor = int(self.factor)
        if self.per_method:
            raise ValueError("per_method=True is not implemented: the cascade is one model for every defacing "
                             "method, conditioned on the removal mask (set cascade.per_method: false)")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if self.box is not None:
            self.box = tuple((int(lo), int(hi)) for lo, hi in self.box)
            if len(self.box) != 3:
                raise ValueError("box needs three (lo, hi) pairs")

    def stage(self, stage: int) -> StageConfig:
        """The :class:`StageConfig` of stage 1 or 2."""
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        return self.stage1 if stage == 1 else self.stage2

    @classmethod
    def from_dict(cls, data: dict | "CascadeConfig" | None) -> "CascadeConfig":
        """Build from a plain (e.g. JSON) dict, refusing unknown keys."""
        return _from_dict(cls, data)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (only lists, numbers, strings, bools, None)."""
        return {
            "stage1": self.stage1.to_dict(),
            "stage2": self.stage2.to_dict(),
            "factor": self.factor,
            "box": None if self.box is None else [list(b) for b in self.box],
            "per_method": self.per_method,
            "seed": self.seed,
        }

    def config_hash(self, length: int = 10) -> str:
        """Stable short hash of :meth:`to_dict` (key order does not matter)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:length]


def face_box(region_mask: np.ndarray, *, margin: int = 4, multiple: int = 4) -> tuple[tuple[int, int], ...]:
    """Box around a region plus a margin, each side a multiple of ``multiple``.

    Parameters
    ----------
    region_mask : ndarray of bool, shape (X, Y, Z)
        The face region on the common grid (e.g. the union of removal masks).
    margin : int
        Voxels added on every side before rounding up.
    multiple : int
        Side lengths are rounded up to a multiple of this (``2 ** (levels-1)``
        of the stage-2 UNet), growing symmetrically and shifted into the grid.

    Returns
    -------
    tuple of (lo, hi)
        One half-open interval per axis.

    Examples
    --------
    >>> m = np.zeros((16, 16, 16), bool); m[2:5, 6:9, 14:16] = True
    >>> face_box(m, margin=1, multiple=4)
    ((0, 8), (4, 12), (12, 16))
    """
    region_mask = np.asarray(region_mask, bool)
    if not region_mask.any():
        raise ValueError("face_box: empty region")
    out = []
    for axis, size in enumerate(region_mask.shape):
        idx = np.nonzero(region_mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        lo, hi = max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, size)
        length = -(-(hi - lo) // multiple) * multiple
        if length > size:
            length = (size // multiple) * multiple
        if length == 0:
            raise ValueError(f"axis {axis} of size {size} is shorter than multiple={multiple}")
        lo = lo - (length - (hi - lo)) // 2
        lo = min(max(lo, 0), size - length)
        out.append((lo, lo + length))
    return tuple(out)


def box_slices(box, shape: tuple[int, ...] | None = None) -> tuple[slice, slice, slice]:
    """Slices of a ``((lo, hi), ...)`` box; None means the whole ``shape``."""
    if box is None:
        if shape is None:
            raise ValueError("box is None and no shape given")
        return tuple(slice(0, s) for s in shape[-3:])
    return tuple(slice(lo, hi) for lo, hi in box)


def pad_to_multiple(array, multiple: int, *, value: float = 0.0):
    """Pad the last three axes at their high end to a multiple of ``multiple``.

    Parameters
    ----------
    array : ndarray or Tensor, shape (..., X, Y, Z)
    multiple : int
    value : float
        Fill value (0 = background; False for masks).

    Returns
    -------
    padded : same type as ``array``
    crop : tuple of slice
        ``padded[(..., *crop)]`` is ``array`` again; see :func:`unpad`.
    """
    shape = tuple(array.shape[-3:])
    extra = [(-s) % multiple for s in shape]
    crop = tuple(slice(0, s) for s in shape)
    if not any(extra):
        return array, crop
    if isinstance(array, torch.Tensor):
        pads = [p for e in reversed(extra) for p in (0, e)]
        if array.dtype == torch.bool:
            return F.pad(array.to(torch.uint8), pads, value=int(value)).bool(), crop
        return F.pad(array, pads, value=value), crop
    widths = [(0, 0)] * (array.ndim - 3) + [(0, e) for e in extra]
    return np.pad(array, widths, constant_values=value), crop


def unpad(array, crop: tuple[slice, ...]):
    """Undo :func:`pad_to_multiple` (crop the last three axes)."""
    return array[(Ellipsis, *crop)]


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool a (B, C, X, Y, Z) tensor by an integer factor."""
    return x if factor == 1 else F.avg_pool3d(x, factor)


def downsample_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Max-pool a boolean (B, C, X, Y, Z) mask: removed if any voxel removed."""
    return mask if factor == 1 else F.max_pool3d(mask.float(), factor) > 0


def upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Trilinear upsampling of a (B, C, X, Y, Z) tensor by an integer factor."""
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="trilinear", align_corners=False)


def make_unet(in_channels: int, *, stage: StageConfig) -> DiffusionModelUNet:
    """MONAI 3D diffusion UNet for one stage (one output channel, no attention levels).

    MONAI's middle block always holds one self-attention layer; it runs through
    PyTorch's scaled-dot-product attention (``use_flash_attention``), 2-3x faster
    than MONAI's own on CPU at the bottleneck sizes used here.

    Parameters
    ----------
    in_channels : int
        3 for stage 1, 4 for stage 2.
    stage : StageConfig

    Returns
    -------
    DiffusionModelUNet
        Its output is the residual over the prior; the last convolution is
        zero-initialised by MONAI, so it starts at exactly the prior.
    """
    levels = len(stage.channels)
    return DiffusionModelUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=1,
        num_res_blocks=stage.num_res_blocks,
        channels=stage.channels,
        attention_levels=(False,) * levels,
        norm_num_groups=stage.norm_num_groups,
        use_flash_attention=True,
    )


def make_scheduler(stage: StageConfig, *, kind: str = "ddpm"):
    """DDPM or DDIM scheduler stepping from the clean-sample estimate, without clipping.

    The scheduler always receives the clean-image estimate of :func:`predict_x0`; what the
    network outputs (``stage.prediction``) is kept on it as ``network_output`` for that
    function.
    """
    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}[kind]
    sched = cls(
        num_train_timesteps=stage.train_timesteps,
        schedule=stage.beta_schedule,
        prediction_type="sample",
        clip_sample=False,
    )
    sched.network_output = stage.prediction
    return sched


def as_volume_tensor(array, device: torch.device, *, dtype=torch.float32) -> torch.Tensor:
    """(N, X, Y, Z) array or tensor -> (N, 1, X, Y, Z) tensor on ``device``."""
    if isinstance(array, torch.Tensor):
        t = array.to(device=device, dtype=dtype)
    else:
        t = torch.as_tensor(np.asarray(array), device=device).to(dtype)
    if t.ndim != 4:
        raise ValueError(f"expected (N, X, Y, Z), got shape {tuple(t.shape)}")
    return t.unsqueeze(1)


def stage1_inputs(defaced, mask, prior, *, factor: int, multiple: int, original=None, device=None) -> dict:
    """Low-resolution, padded stage-1 tensors.

    Parameters
    ----------
    defaced, mask, prior : array, shape (N, X, Y, Z)
    factor : int
        Downsampling factor.
    multiple : int
        The low-res grid is padded so each side divides by this.
    original : array, optional
        Ground truth (training).
    device : torch.device, optional
        Default CPU.

    Returns
    -------
    dict
        ``defaced``, ``mask`` (bool), ``prior`` [, ``original``]: tensors of
        shape (N, 1, x, y, z); ``crop``: slices taking the upsampled result
        back to (X, Y, Z).
    """
    device = device or torch.device("cpu")
    out = {}
    named = {"defaced": defaced, "prior": prior, "original": original}
    for name, arr in named.items():
        if arr is not None:
            padded, crop = pad_to_multiple(as_volume_tensor(arr, device), factor * multiple)
            out[name] = downsample(padded, factor)
    padded, crop = pad_to_multiple(as_volume_tensor(mask, device, dtype=torch.bool), factor * multiple)
    out["mask"] = downsample_mask(padded, factor)
    out["crop"] = crop
    return out


def stage1_to_full(x_low: torch.Tensor, *, factor: int, crop: tuple[slice, ...],
                   prior_low: torch.Tensor | None = None, prior: torch.Tensor | None = None,
                   mask_low: torch.Tensor | None = None) -> torch.Tensor:
    """Upsample a stage-1 result and crop it back to the common grid.

    With ``prior_low`` (stage 1's prior), ``prior`` (the full-grid prior, (N, 1, X, Y, Z)) and
    ``mask_low`` (stage 1's mask) the *generated residual* over the prior (zero outside the mask)
    is upsampled and added to the full-resolution prior, as
    :func:`refacelib.diffusion.grid.full_resolution` does: a stage 1 that returns its prior then gives
    the prior exactly, so an untrained cascade reproduces the average-face baseline voxel for voxel.
    """
    if prior_low is None or prior is None:
        return unpad(upsample(x_low, factor), crop)
    residual = x_low - prior_low
    if mask_low is not None:
        residual = torch.where(mask_low, residual, torch.zeros_like(residual))
    return prior + unpad(upsample(residual, factor), crop)


def stage2_inputs(defaced, mask, prior, coarse, *, box, original=None, device=None,
                  multiple: int | None = None) -> dict:
    """Face-box crops for stage 2.

    Parameters
    ----------
    defaced, mask, prior : array, shape (N, X, Y, Z)
    coarse : array or Tensor, shape (N, X, Y, Z) or (N, 1, X, Y, Z)
        Upsampled stage-1 estimate on the full grid (see :func:`stage1_to_full`).
    box : tuple of (lo, hi) or None
        Stage-2 crop; None is the whole grid.
    original : array, optional
    device : torch.device, optional
    multiple : int, optional
        When given, each side of the box must divide by it (ValueError).

    Returns
    -------
    dict
        ``defaced``, ``mask`` (bool), ``prior``, ``coarse`` [, ``original``]:
        (N, 1, bx, by, bz) tensors.
    """
    device = device or torch.device("cpu")
    slices = box_slices(box, tuple(np.shape(defaced)))
    sides = [s.stop - s.start for s in slices]
    if multiple and any(side % multiple for side in sides):
        raise ValueError(f"stage-2 box sides {sides} must divide by {multiple}; see face_box")
    sl = (Ellipsis, *slices)
    out = {}
    for name, arr in {"defaced": defaced, "prior": prior, "original": original}.items():
        if arr is not None:
            out[name] = as_volume_tensor(arr, device)[sl].contiguous()
    out["mask"] = as_volume_tensor(mask, device, dtype=torch.bool)[sl].contiguous()
    if isinstance(coarse, torch.Tensor) and coarse.ndim == 5:
        coarse_t = coarse.to(device=device, dtype=torch.float32)
    else:
        coarse_t = as_volume_tensor(coarse, device)
    out["coarse"] = coarse_t[sl].contiguous()
    return out


def conditioning(inputs: dict, *, coarse: torch.Tensor | None = None) -> torch.Tensor:
    """Conditioning channels: defaced, mask [, coarse] -> (B, 2 or 3, ...)."""
    parts = [inputs["defaced"], inputs["mask"].to(inputs["defaced"].dtype)]
    if coarse is None:
        coarse = inputs.get("coarse")
    if coarse is not None:
        parts.append(coarse)
    return torch.cat(parts, dim=1)


def predict_x0(model, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, prior: torch.Tensor,
               scheduler=None) -> torch.Tensor:
    """Clean-image estimate in float32 from the network's output ``out = model([x_t, cond], t)``.

    ``prior + out`` when the network predicts the residual (``x0``, the default, and whenever
    ``scheduler`` is None); ``prior + x0_from_v(out, ...)`` when ``scheduler.network_output``
    is ``"v"`` (:func:`make_scheduler`).
    """
    out = model(torch.cat([x_t, cond], dim=1), timesteps=t).float()
    if getattr(scheduler, "network_output", "x0") == "v":
        return prior + x0_from_v(out, x_t, t, prior, scheduler.alphas_cumprod)
    return prior + out


def x0_from_v(v: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, prior: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The residual ``x0 - prior`` from a velocity ``v`` of the residual (Salimans & Ho 2022).

    The forward process noises the image, ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``, so
    the residual ``r = x0 - prior`` is noised as ``r_t = x_t - sqrt(abar) prior``, and
    ``r = sqrt(abar) r_t - sqrt(1 - abar) v``.

    Examples
    --------
    >>> ac = torch.tensor([0.64])  # sqrt 0.8, sqrt(1 - ac) 0.6
    >>> x0, prior, eps = torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.tensor([[1.0]])
    >>> x_t = 0.8 * x0 + 0.6 * eps
    >>> v = 0.8 * eps - 0.6 * (x0 - prior)
    >>> round(float(x0_from_v(v, x_t, torch.tensor([0]), prior, ac)), 6)
    1.5
    """
    ac = alphas_cumprod.to(x_t.device)[t].float().view(-1, *([1] * (x_t.ndim - 1)))
    return ac.sqrt() * (x_t - ac.sqrt() * prior) - (1.0 - ac).sqrt() * v


def noise_in_mask(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Forward diffusion inside ``mask`` only; known voxels stay clean."""
    return torch.where(mask, scheduler.add_noise(x0, noise, t), x0)
