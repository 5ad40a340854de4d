"""Refacing: sample the removed face with the trained cascade.

Sampling is inpainting: noise lives only inside the removal mask. The chain
starts from the *prior noised to the first timestep* inside the mask (for a
long schedule this is pure noise; for a short one it matches what the network
saw in training) and from the clean defaced image outside it. After every
denoising step the known voxels (outside the mask) are reset to the clean
defaced values, exactly as in training, where known voxels of ``x_t`` are
never noised. The final output is a composite: outside the mask it is
bit-for-bit the defaced input.

Stage 1 samples the downsampled whole head; stage 2 samples the face box at
full resolution, conditioned on the stage-1 result (its residual over the
prior upsampled and added to the full-resolution prior). Inside the mask
but outside the face box the upsampled stage-1 result is used.

Estimators returned by :func:`reface`:

``sample``
    The first sample (what an attacker running the model once sees).
``mean``
    Mean of ``n_samples`` samples (a better point estimate when the model is
    undertrained: the sample-to-sample variation averages out).
``one_step``
    The network's x0 estimate at the first, noisiest timestep, cascaded (stage
    2 conditioned on the stage-1 one-step estimate) and averaged over the
    ``n_samples`` initial noises (stage 2 reuses the chain's initial noise,
    so with ``steps=1`` it equals the sample). At ``t = T`` this approximates the
    posterior mean ``E[x0 | defaced]`` in two forward passes per stage.

Randomness: one ``torch.Generator`` per batch of (sample, subject) items,
seeded from ``seed`` and the batch number, drives the initial noise and every
ancestral step, so the same ``seed`` (with the same ``batch_size`` and
``n_samples``) reproduces the output on the same device.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from refacelib.diffusion.cascade import (
    STAGE_IN_CHANNELS,
    CascadeConfig,
    box_slices,
    conditioning,
    make_scheduler,
    predict_x0,
    stage1_inputs,
    stage1_to_full,
    stage2_inputs,
)
from refacelib._utils.device import autocast_context, resolve_device

__all__ = ["reface", "sample_stage", "one_step_estimate", "make_sampler", "auto_batch_size", "batch_from_memory",
           "network_evaluations"]


def make_sampler(stage_cfg, *, sampler: str = "ddim", steps: int | None = 25, eta: float | None = None,
                 device=None):
    """Scheduler, the list of timesteps and the DDIM ``eta`` for one stage.

    Parameters
    ----------
    stage_cfg : StageConfig
    sampler : {"ddim", "ddpm"}
        ``"ddpm"`` with ``steps`` equal to the training timesteps (or None) is
        MONAI's ancestral DDPM; with fewer steps it is DDIM with ``eta=1``
        (the strided ancestral sampler; MONAI's DDPM step assumes stride 1).
    steps : int or None
        Number of denoising steps, clipped to the training timesteps.
    eta : float, optional
        DDIM stochasticity (default 0 for ``"ddim"``, 1 for strided DDPM).
    device : torch.device, optional
        Put the scheduler's tables (``alphas_cumprod`` ...) there now: MONAI
        moves them on first use, a blocking host-to-device copy inside the
        sampling loop.

    Returns
    -------
    scheduler, timesteps (list of int), eta (float or None for DDPM)
    """
    total = stage_cfg.train_timesteps
    steps = total if steps is None else max(1, min(int(steps), total))
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    if sampler == "ddpm" and steps == total:
        sched, eta = make_scheduler(stage_cfg, kind="ddpm"), None
    else:
        sched = make_scheduler(stage_cfg, kind="ddim")
        eta = (1.0 if sampler == "ddpm" else 0.0) if eta is None else float(eta)
    sched.set_timesteps(steps)
    timesteps = [int(t) for t in sched.timesteps]  # host integers, read before the tables move
    return _tables_to(sched, device), timesteps, eta


def _tables_to(sched, device):
    """Every tensor attribute of a MONAI scheduler on ``device`` (None: left as is)."""
    if device is not None:
        for name, value in list(vars(sched).items()):
            if isinstance(value, torch.Tensor):
                setattr(sched, name, value.to(device))
    return sched


def _step(sched, x0_hat, t: int, x, gen, eta):
    if eta is None:
        return sched.step(x0_hat, t, x, generator=gen)[0]
    return sched.step(x0_hat, t, x, eta=eta, generator=gen)[0]


@torch.no_grad()
def sample_stage(model, sampler, inputs: dict, *, gen: torch.Generator, coarse=None):
    """Run one stage's inpainting chain.

    Returns
    -------
    x0 : Tensor
        Final sample, composited with the known voxels.
    first : Tensor
        x0 estimate at the first timestep, composited.
    noise : Tensor
        The initial noise (reused by :func:`_first_estimate`).
    """
    sched, timesteps, eta = sampler
    known, mask, prior = inputs["defaced"], inputs["mask"], inputs["prior"]
    cond = conditioning(inputs, coarse=coarse)
    n, dev = known.shape[0], known.device
    noise = torch.randn(known.shape, generator=gen, device=dev)
    t0 = torch.full((n,), timesteps[0], dtype=torch.long, device=dev)
    x = torch.where(mask, sched.add_noise(prior, noise, t0), known)
    first = None
    for t in timesteps:
        tt = torch.full((n,), t, dtype=torch.long, device=dev)
        with autocast_context(dev):
            x0_hat = predict_x0(model, x, tt, cond, prior, sched)
        if first is None:
            first = torch.where(mask, x0_hat, known)
        x = torch.where(mask, _step(sched, x0_hat, t, x, gen, eta), known)
    return x, first, noise


@torch.no_grad()
def _first_estimate(model, sampler, inputs: dict, *, noise: torch.Tensor, coarse) -> torch.Tensor:
    """x0 estimate at the first timestep only (one forward pass, given noise)."""
    sched, timesteps, _ = sampler
    known, mask, prior = inputs["defaced"], inputs["mask"], inputs["prior"]
    n, dev = known.shape[0], known.device
    tt = torch.full((n,), timesteps[0], dtype=torch.long, device=dev)
    x = torch.where(mask, sched.add_noise(prior, noise, tt), known)
    with autocast_context(dev):
        x0_hat = predict_x0(model, x, tt, conditioning(inputs, coarse=coarse), prior, sched)
    return torch.where(mask, x0_hat, known)


def _cascade_chunk(vol: dict, idx: torch.Tensor, models, samplers, config: CascadeConfig, gen) -> dict:
    """Both stages for one batch of items; full-grid composites (B, 1, X, Y, Z)."""
    d, m, p = vol["defaced"][idx], vol["mask"][idx], vol["prior"][idx]
    low = stage1_inputs(d, m, p, factor=config.factor, multiple=config.stage1.multiple, device=d.device)
    x1, first1, _ = sample_stage(models[0], samplers[0], low, gen=gen)
    up = {k: stage1_to_full(v, factor=config.factor, crop=low["crop"], prior_low=low["prior"], prior=p.unsqueeze(1),
                            mask_low=low["mask"])
          for k, v in (("sample", x1), ("one_step", first1))}
    m5, d5 = m.unsqueeze(1), d.unsqueeze(1)
    out = {k: torch.where(m5, v, d5) for k, v in up.items()}
    out["stage1"] = out["sample"].clone()
    if models[1] is None:
        return out
    sl = (Ellipsis, *box_slices(config.box, tuple(d.shape)))
    crop = stage2_inputs(d, m, p, up["sample"], box=config.box, device=d.device,
                         multiple=config.stage2.multiple)
    x2, _, noise2 = sample_stage(models[1], samplers[1], crop, gen=gen)
    first2 = _first_estimate(models[1], samplers[1], crop, noise=noise2, coarse=up["one_step"][sl])
    out["sample"][sl] = x2
    out["one_step"][sl] = first2
    return out


def _volumes(defaced, mask, prior, device) -> dict:
    """Inputs as (N, X, Y, Z) tensors on ``device`` (one host-device copy)."""
    vol = {
        "defaced": torch.as_tensor(np.asarray(defaced, np.float32)).to(device),
        "mask": torch.as_tensor(np.asarray(mask, bool)).to(device),
        "prior": torch.as_tensor(np.asarray(prior, np.float32)).to(device),
    }
    shapes = {tuple(v.shape) for v in vol.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 4:
        raise ValueError(f"defaced, mask, prior must share one (N, X, Y, Z) shape, got {shapes}")
    return vol


def _chunk_seed(seed: int, chunk: int) -> int:
    return (int(seed) * 1_000_003 + chunk * 7_919 + 17) % (2**62)


def reface(defaced, mask, prior, models, config: CascadeConfig | dict, *, sampler: str = "ddim",
           steps: int | None = 25, n_samples: int = 1, seed: int = 0, batch_size: int | str = 8, device="auto",
           progress: bool = False, eta: float | None = None, return_samples: bool = False,
           compile: bool = False) -> dict:
    """Put a face back into defaced volumes with the two-stage cascade.

    Parameters
    ----------
    defaced, mask, prior : array, shape (N, X, Y, Z)
        Defaced image, removal mask (True = removed, to generate), prior
        (average head intensity-matched to each subject), on the common grid.
    models : (stage1_model, stage2_model)
        Trained networks (EMA weights); ``stage2_model=None`` stops after
        stage 1 (upsampled coarse result everywhere in the mask).
    config : CascadeConfig or dict
    sampler : {"ddim", "ddpm"}
    steps : int or None
        Denoising steps per stage (see :func:`make_sampler`).
    n_samples : int
        Samples per subject (for ``mean``).
    seed : int
    batch_size : int or "auto"
        Items (subject x sample) per forward pass; ``"auto"`` sizes it to the
        free GPU memory (:func:`auto_batch_size`; 8 on CPU).
    device : str
    progress : bool
    eta : float, optional
        DDIM stochasticity override.
    return_samples : bool
        Also return every sample as ``samples`` (N, S, X, Y, Z).
    compile : bool
        Wrap the networks in ``torch.compile`` (off by default: compiling
        takes minutes and pays off only for long runs on a GPU).

    Returns
    -------
    dict of float32 ndarrays
        ``sample``, ``mean``, ``one_step``, ``stage1`` (first sample after
        stage 1 only), all (N, X, Y, Z), and optionally ``samples``. Outside
        the mask every array equals ``defaced`` bit for bit.
    """
    config = CascadeConfig.from_dict(config)
    device = resolve_device(device)
    vol = _volumes(defaced, mask, prior, device)
    models = tuple(None if mdl is None else mdl.to(device).eval() for mdl in models)
    samplers = [make_sampler(config.stage(s), sampler=sampler, steps=steps, eta=eta, device=device) for s in (1, 2)]
    n = vol["defaced"].shape[0]
    if batch_size == "auto":
        batch_size = auto_batch_size(models, config, tuple(vol["defaced"].shape[1:]), device=device,
                                     n_items=n * n_samples)
    if compile:
        models = tuple(None if mdl is None else torch.compile(mdl, dynamic=False) for mdl in models)
    acc = {k: torch.zeros_like(vol["defaced"]) for k in ("mean", "one_step")}
    first = {k: torch.empty_like(vol["defaced"]) for k in ("sample", "stage1")}
    kept = [] if return_samples else None
    # chunk bounds are host integers (sample-major items: item = s * n + i), so the loop
    # never reads a device tensor back to decide what to index (no host-device syncs)
    bounds = [(lo, min(lo + int(batch_size), n * n_samples)) for lo in range(0, n * n_samples, int(batch_size))]
    for c, (lo, hi) in enumerate(tqdm(bounds, disable=not progress, desc="reface")):
        gen = torch.Generator(device=device)
        gen.manual_seed(_chunk_seed(seed, c))
        subj = torch.arange(lo, hi, device=device) % n
        out = _cascade_chunk(vol, subj, models, samplers, config, gen)
        acc["mean"].index_add_(0, subj, out["sample"][:, 0])
        acc["one_step"].index_add_(0, subj, out["one_step"][:, 0])
        n_first = max(0, min(hi, n) - lo)  # items of the first sample come first
        for k in first:
            first[k][lo:lo + n_first] = out[k][:n_first, 0]
        if kept is not None:
            kept.append(out["sample"][:, 0].cpu())
    return _finish(vol, acc, first, kept, n=n, n_samples=n_samples)


def _finish(vol, acc, first, kept, *, n: int, n_samples: int) -> dict:
    """Average, re-composite (exact outside the mask) and move to numpy."""
    d, m = vol["defaced"], vol["mask"]
    result = {k: torch.where(m, v / n_samples, d) for k, v in acc.items()}
    result.update({k: torch.where(m, v, d) for k, v in first.items()})
    out = {k: v.cpu().numpy().astype(np.float32, copy=False) for k, v in result.items()}
    if kept is not None:
        allv = torch.cat(kept).reshape(n_samples, n, *d.shape[1:]).transpose(0, 1)
        out["samples"] = allv.numpy().astype(np.float32, copy=False)
    return out


def batch_from_memory(free_bytes: float, per_item_bytes: float, *, n_items: int, fraction: float = 0.5,
                      cap: int = 256) -> int:
    """Items per chunk that fit in ``fraction`` of the free memory, in [1, min(n_items, cap)].

    Examples
    --------
    >>> batch_from_memory(8e9, 1e8, n_items=100)
    40
    >>> batch_from_memory(1e6, 1e8, n_items=100), batch_from_memory(8e12, 1e8, n_items=30)
    (1, 30)
    """
    fit = int(fraction * float(free_bytes) // max(float(per_item_bytes), 1.0))
    return max(1, min(fit, int(n_items), int(cap)))


@torch.no_grad()
def auto_batch_size(models, config: CascadeConfig | dict, grid_shape: tuple, *, device, n_items: int,
                    fraction: float = 0.5, cap: int = 256, default: int = 8) -> int:
    """Sampling batch that fits in free GPU memory; ``min(default, n_items)`` off CUDA.

    One probe forward pass per stage at batch 2 (bf16 autocast, as in
    sampling) measures the peak activation memory per item; each item also
    holds about 16 float32 copies of the common grid (inputs, composites,
    accumulators). The batch is ``fraction`` of the free memory
    (``torch.cuda.mem_get_info``, plus what PyTorch's allocator caches unused) over that per-item cost
    (:func:`batch_from_memory`).
    """
    config, device = CascadeConfig.from_dict(config), resolve_device(device)
    if device.type != "cuda":
        return max(1, min(int(default), int(n_items)))
    mult = config.factor * config.stage1.multiple
    shapes = {1: [-(-s // mult) * config.stage1.multiple for s in grid_shape],
              2: [sl.stop - sl.start for sl in box_slices(config.box, grid_shape)]}
    held = 16 * 4 * int(np.prod(grid_shape))
    activations = 0.0
    for stage, model in zip((1, 2), models):
        if model is None:
            continue
        x = torch.zeros((2, STAGE_IN_CHANNELS[stage], *shapes[stage]), device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with autocast_context(device):
            model(x, timesteps=torch.zeros(2, dtype=torch.long, device=device))
        activations = max(activations, (torch.cuda.max_memory_allocated(device) - base) / 2)
    per_item = held + activations
    free, _ = torch.cuda.mem_get_info(device)
    # memory this process's allocator holds in its cache but does not use is free to it as well (an
    # allocation that finds it fragmented makes the allocator release its cache and retry): without it,
    # a second refacing run in one process (the next defacing method) would get a smaller batch
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return batch_from_memory(free, per_item, n_items=n_items, fraction=fraction, cap=cap)


def network_evaluations(steps: int) -> int:
    """Network evaluations of one item and sample by :func:`reface` at ``steps`` per stage.

    Each stage's ``steps``, plus the one-step estimate of stage 2.

    >>> network_evaluations(50)
    101
    """
    return 2 * int(steps) + 1


def one_step_estimate(defaced, mask, prior, models, config, *, n_samples: int = 1, seed: int = 0,
                      batch_size: int = 8, device="auto") -> np.ndarray:
    """Cascaded one-step x0 estimate at the noisiest timestep, (N, X, Y, Z).

    Equivalent to ``reface(..., sampler="ddim", steps=1)["mean"]``: each
    stage makes a single forward pass at ``t = T - 1``.
    """
    res = reface(defaced, mask, prior, models, config, sampler="ddim", steps=1, n_samples=n_samples,
                 seed=seed, batch_size=batch_size, device=device)
    return res["mean"]
