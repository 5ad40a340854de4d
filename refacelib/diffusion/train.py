"""Training of one cascade stage, in a notebook or under ``torchrun``.

:func:`train_stage` is the same function in both places: in-process it runs
with world size 1 and no process group; launched as
``torchrun --nproc_per_node=K -m refacelib.train --data d.npz --config c.json
--stage 1 --out ckpt.pt`` it joins the process group (gloo on CPU, nccl on
CUDA), wraps the network in DistributedDataParallel, every rank draws its own
batches, and only rank 0 writes checkpoints.

Loss: noise is added inside the removal mask only (known voxels stay clean),
the network predicts the residual over the prior, and the loss is the mean
squared error of ``prior + residual`` against the original over the masked
voxels only.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from refacelib import __version__
from refacelib.diffusion.cascade import (
    LOSS_WEIGHTINGS,
    STAGE_IN_CHANNELS,
    CascadeConfig,
    conditioning,
    make_scheduler,
    make_unet,
    noise_in_mask,
    predict_x0,
    stage1_inputs,
    stage1_to_full,
    stage2_inputs,
)
from refacelib._utils.device import autocast_context, resolve_device
from refacelib._utils.io import atomic_path, load_checkpoint

__all__ = ["train_stage", "timestep_weights", "load_stage", "validation_trend", "prepare_stage_data", "CHECKPOINT_VERSION", "main"]

CHECKPOINT_VERSION = f"refacelib-{__version__}-cascade-ckpt-1"
_MODEL_KEYS = ("channels", "num_res_blocks", "norm_num_groups", "train_timesteps", "beta_schedule")


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _step_seed(seed: int, stage: int, rank: int, step: int) -> int:
    """Seed of one training step: reproducible and independent of resuming."""
    return (seed * 1_000_003 + stage * 100_003 + rank * 10_007 + step * 7) % (2**62)


def prepare_stage_data(stage: int, data: dict, config: CascadeConfig, *, device) -> dict:
    """Stage tensors (N, 1, ...) on ``device`` from (N, X, Y, Z) arrays.

    For stage 2, ``data["coarse"]`` is the upsampled stage-1 estimate; when
    missing or None, the ground-truth original is downsampled and upsampled
    again (standard cascade training) and ``coarse_is_truth`` is set, which
    turns on conditioning augmentation.
    """
    st = config.stage(stage)
    common = dict(original=data["original"], device=device)
    if stage == 1:
        out = stage1_inputs(data["defaced"], data["mask"], data["prior"], factor=config.factor,
                            multiple=st.multiple, **common)
        out.pop("crop")
        out["coarse_is_truth"] = False
        return out
    coarse = data.get("coarse")
    is_truth = coarse is None
    if is_truth:
        low = stage1_inputs(data["original"], data["mask"], data["original"], factor=config.factor,
                            multiple=config.stage1.multiple, device=device)
        coarse = stage1_to_full(low["defaced"], factor=config.factor, crop=low["crop"])
    out = stage2_inputs(data["defaced"], data["mask"], data["prior"], coarse, box=config.box,
                        multiple=st.multiple, **common)
    out["coarse_is_truth"] = is_truth
    return out


def timestep_weights(scheduler, t: torch.Tensor, *, weighting: str = "uniform", gamma: float = 5.0,
                     prediction: str = "x0") -> torch.Tensor:
    """Per-example weights of the masked x0 loss at timesteps ``t``: 1 (``uniform``), ``1 + SNR(t)``
    (``uniform`` with ``prediction="v"``: the v loss on the x0 scale) or ``min(SNR(t), gamma)``
    (``min_snr``, whatever the prediction).

    ``SNR(t) = alpha_bar(t) / (1 - alpha_bar(t))`` from the scheduler's table.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> sched = SimpleNamespace(alphas_cumprod=torch.tensor([0.99, 0.5, 0.01]))
    >>> [round(w, 4) for w in timestep_weights(sched, torch.tensor([0, 1, 2]), weighting="min_snr").tolist()]
    [5.0, 1.0, 0.0101]
    >>> timestep_weights(sched, torch.tensor([0, 2])).tolist()
    [1.0, 1.0]
    >>> [round(w, 4) for w in timestep_weights(sched, torch.tensor([1, 2]), prediction="v").tolist()]
    [2.0, 1.0101]
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}")
    if weighting == "uniform" and prediction == "x0":
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    ac = scheduler.alphas_cumprod.to(t.device)[t].float()
    if weighting == "uniform":  # v loss = x0 loss / (1 - alpha_bar)
        return 1.0 / (1.0 - ac)
    return torch.clamp(ac / (1.0 - ac), max=float(gamma))


def _batch_loss(model, scheduler, tensors: dict, idx: torch.Tensor, gen: torch.Generator, *,
                cond_noise: float, device, amp: bool = True, weighting: str | None = "uniform",
                gamma: float = 5.0) -> torch.Tensor:
    """Masked x0 MSE of one batch, averaged per example (noise, timesteps drawn from ``gen``).

    ``weighting``/``gamma``: :func:`timestep_weights` of each example for the network's
    output (``scheduler.network_output``); None: unweighted, for the validation loss, so that
    recipes compare on one scale.
    """
    b = {k: v[idx] for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    x0, mask = b["original"], b["mask"]
    t = torch.randint(0, scheduler.num_train_timesteps, (x0.shape[0],), generator=gen, device=device)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    x_t = noise_in_mask(scheduler, x0, noise, t, mask)
    coarse = b.get("coarse")
    if coarse is not None and tensors["coarse_is_truth"] and cond_noise > 0:
        coarse = coarse + cond_noise * torch.randn(coarse.shape, generator=gen, device=device)
    with autocast_context(device, enabled=amp):
        x0_hat = predict_x0(model, x_t, t, conditioning(b, coarse=coarse), b["prior"], scheduler)
    # each example weighs the same, whatever the size of its removal mask (a skull-stripped
    # head removes ten times the voxels of a defaced face and would otherwise dominate)
    m = mask.float()
    dims = tuple(range(1, m.ndim))
    per_example = (((x0_hat - x0) ** 2) * m).sum(dim=dims) / m.sum(dim=dims).clamp_min(1.0)
    if weighting is not None:
        per_example = per_example * timestep_weights(scheduler, t, weighting=weighting, gamma=gamma,
                                                     prediction=getattr(scheduler, "network_output", "x0"))
    return per_example.mean()


@torch.no_grad()
def _val_loss(model, scheduler, tensors: dict, *, seed: int, batch_size: int, device) -> float:
    """Masked x0 MSE on validation data with a fixed noise seed."""
    model.eval()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    n = tensors["original"].shape[0]
    total, count = 0.0, 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n), device=device)
        loss = _batch_loss(model, scheduler, tensors, idx, gen, cond_noise=0.0, device=device, weighting=None)
        total, count = total + loss.item() * len(idx), count + len(idx)
    model.train()
    return total / max(count, 1.0)


class _Ema:
    """Exponential moving average of weights with the usual warm-up."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)


def _save_checkpoint(path, *, step, model, ema, optimizer, config: CascadeConfig, stage: int,
                     history: list | None = None) -> None:
    """Atomic write (tmp file + os.replace) of a weights_only-loadable dict.

    A save killed half-way leaves the previous checkpoint in place and no partial file.
    """
    payload = {
        "step": int(step),
        "model": model.state_dict(),
        "ema": ema.module.state_dict(),
        "optimizer": optimizer.state_dict(),
        "config": {**config.to_dict(), "stage": int(stage)},
        "version": CHECKPOINT_VERSION,
        # the loss history so far, so that a resumed training keeps its whole curve
        "history": [[float(r["step"]), float(r["loss"]), float(r["val_loss"]), float(r["seconds"])]
                    for r in (history or [])],
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _check_compatible(saved: dict, config: CascadeConfig, stage: int) -> None:
    if saved.get("stage") != stage:
        raise ValueError(f"checkpoint is for stage {saved.get('stage')}, not {stage}")
    old, new = saved[f"stage{stage}"], config.stage(stage).to_dict()
    diff = [k for k in _MODEL_KEYS if old[k] != new[k]]
    if diff:
        raise ValueError(f"checkpoint network differs from config in {diff}; use resume=False")


def _build(stage: int, config: CascadeConfig, device):
    """Network (seeded init), its EMA copy and the AdamW optimiser."""
    st = config.stage(stage)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + stage)
        model = make_unet(STAGE_IN_CHANNELS[stage], stage=st).to(device)
    ema = _Ema(model, st.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=st.lr)
    return model, ema, optimizer


def _resume(path, *, stage, config, model, ema, optimizer, device) -> int:
    ckpt = load_checkpoint(path, map_location=device)
    _check_compatible(ckpt["config"], config, stage)
    model.load_state_dict(ckpt["model"])
    ema.module.load_state_dict(ckpt["ema"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return int(ckpt["step"])


def _should_stop(start: float, max_seconds, device) -> bool:
    """Time budget check, agreed on by all ranks."""
    if max_seconds is None:
        return False
    flag = torch.tensor([float(time.perf_counter() - start > max_seconds)], device=device)
    if _dist_info()[1] > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def train_stage(stage: int, data: dict, config: CascadeConfig | dict, *, val_data: dict | None = None,
                device="auto", checkpoint_path=None, resume: bool = True, checkpoint_every: int = 50,
                progress: bool = True, log_every: int = 10, max_seconds: float | None = None,
                amp: bool = True, compile: bool = False):
    """Train (or continue training) one stage of the cascade.

    Parameters
    ----------
    stage : {1, 2}
    data : dict of arrays, shape (N, X, Y, Z)
        ``original``, ``defaced``, ``mask`` (True = removed), ``prior``; for
        stage 2 optionally ``coarse`` (upsampled stage-1 estimate). Without
        it the downsampled-upsampled original is used with Gaussian
        conditioning augmentation (``StageConfig.cond_noise``).
    config : CascadeConfig or dict
        ``config.stage(stage).steps`` is the *total* number of steps.
    val_data : dict, optional
        Same keys; its masked x0 loss (EMA weights, fixed noise seed) is
        logged every ``log_every`` steps and at the end.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda:1"`` ...
    checkpoint_path : path, optional
        Written every ``checkpoint_every`` steps and at the end (rank 0);
        resumed from when present and ``resume``.
    progress : bool
        tqdm bar with the running loss (rank 0 only).
    max_seconds : float, optional
        Stop early after this wall time; ``history.attrs["stopped_early"]``.
    amp : bool
        bf16 autocast of the network on CUDA (no effect elsewhere).
    compile : bool
        Train through ``torch.compile`` of the network (checkpoints hold the
        plain weights either way).

    Returns
    -------
    model_ema : DiffusionModelUNet
        EMA weights, eval mode.
    history : pandas.DataFrame
        Columns ``step, loss, val_loss, seconds``: every step so far, those of an
        interrupted earlier call included (saved in the checkpoint; ``seconds``
        counts on from their wall time).
    """
    config = CascadeConfig.from_dict(config)
    st, device = config.stage(stage), resolve_device(device)
    rank, world = _dist_info()
    tensors = prepare_stage_data(stage, data, config, device=device)
    val = None if val_data is None else prepare_stage_data(stage, val_data, config, device=device)
    model, ema, optimizer = _build(stage, config, device)
    scheduler = make_scheduler(st)
    step, earlier = 0, []
    if checkpoint_path is not None and resume and Path(checkpoint_path).exists():
        step = _resume(checkpoint_path, stage=stage, config=config, model=model, ema=ema,
                       optimizer=optimizer, device=device)
        earlier = _earlier_rows(checkpoint_path, step)
    net = model
    if world > 1:
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        net = torch.compile(net, dynamic=False)  # dynamic shapes broke Inductor on these 3D convs
    rows, stopped = [], False
    # a resumed run counts on from the wall time its earlier rows reached
    start = time.perf_counter() - (earlier[-1]["seconds"] if earlier else 0.0)
    n = tensors["original"].shape[0]
    bar = tqdm(total=st.steps, initial=step, disable=not progress or rank != 0, desc=f"stage {stage}")
    while step < st.steps:
        step += 1
        gen = torch.Generator(device=device)
        gen.manual_seed(_step_seed(config.seed, stage, rank, step))
        idx = torch.randint(0, n, (st.batch_size,), generator=gen, device=device)
        loss = _batch_loss(net, scheduler, tensors, idx, gen, cond_noise=st.cond_noise, device=device, amp=amp,
                           weighting=st.loss_weighting, gamma=st.snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.update(model, step)
        stopped = _should_stop(start, max_seconds, device)
        last = step == st.steps or stopped
        rows.append(_log_row(step, loss, ema, scheduler, val, last or step % log_every == 0,
                             config=config, batch_size=st.batch_size, device=device, start=start))
        bar.update(1)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4g}")
        if checkpoint_path is not None and rank == 0 and (last or step % checkpoint_every == 0):
            _save_checkpoint(checkpoint_path, step=step, model=model, ema=ema, optimizer=optimizer,
                             config=config, stage=stage, history=earlier + rows)
        if stopped:
            break
    bar.close()
    history = pd.DataFrame(earlier + rows, columns=["step", "loss", "val_loss", "seconds"])
    history.attrs["stopped_early"] = stopped
    return ema.module.eval(), history


def _earlier_rows(checkpoint_path, step: int) -> list[dict]:
    """History rows up to ``step`` saved in the checkpoint a run resumes from (none in older ones)."""
    saved = load_checkpoint(checkpoint_path, map_location="cpu").get("history") or []
    return [{"step": int(r[0]), "loss": r[1], "val_loss": r[2], "seconds": r[3]} for r in saved if r[0] <= step]


def _log_row(step, loss, ema, scheduler, val, with_val, *, config, batch_size, device, start) -> dict:
    val_loss = math.nan
    if val is not None and with_val:
        val_loss = _val_loss(ema.module, scheduler, val, seed=config.seed + 12345,
                             batch_size=batch_size, device=device)
    return {"step": step, "loss": float(loss.detach()), "val_loss": val_loss,
            "seconds": time.perf_counter() - start}


def validation_trend(history: pd.DataFrame, *, tail: float = 0.25) -> pd.DataFrame:
    """Did the validation loss fall, and has it flattened? One row per stage.

    Columns ``stage``, ``first_val_loss``, ``last_val_loss``, ``fell_pct`` (the
    fall from the first to the last logged validation loss, % of the first) and
    ``tail_change_pct`` (the change over the last ``tail`` of the steps, % of the
    loss at its start: near 0 when the curve has flattened, clearly negative
    when training stopped while the loss still fell).

    Examples
    --------
    >>> h = pd.DataFrame({"stage": 1, "step": [1, 2, 3, 4], "val_loss": [4.0, 2.0, 1.0, 1.0]})
    >>> validation_trend(h)[["fell_pct", "tail_change_pct"]].values.tolist()
    [[75.0, 0.0]]
    """
    rows = []
    for stage, h in history.dropna(subset=["val_loss"]).groupby("stage"):
        h = h.sort_values("step")
        first, last = float(h["val_loss"].iloc[0]), float(h["val_loss"].iloc[-1])
        cut = h["step"].max() - tail * (h["step"].max() - h["step"].min())
        start = float(h.loc[h["step"] >= cut, "val_loss"].iloc[0])
        rows.append({"stage": int(stage), "first_val_loss": first, "last_val_loss": last,
                     "fell_pct": 100.0 * (first - last) / first if first else float("nan"),
                     "tail_change_pct": 100.0 * (last - start) / start if start else float("nan")})
    return pd.DataFrame(rows, columns=["stage", "first_val_loss", "last_val_loss", "fell_pct", "tail_change_pct"])


def load_stage(checkpoint_path, *, device="auto", weights: str = "ema"):
    """Network of a checkpoint, for sampling.

    Parameters
    ----------
    checkpoint_path : path
    device : str
    weights : {"ema", "model"}

    Returns
    -------
    model : DiffusionModelUNet
        In eval mode on ``device``.
    config : CascadeConfig
    stage : int
    """
    device = resolve_device(device)
    ckpt = load_checkpoint(checkpoint_path, map_location=device)
    saved = dict(ckpt["config"])
    stage = saved.pop("stage")
    config = CascadeConfig.from_dict(saved)
    model = make_unet(STAGE_IN_CHANNELS[stage], stage=config.stage(stage)).to(device)
    model.load_state_dict(ckpt[weights])
    return model.eval(), config, stage


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m refacelib.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help=".npz with original, defaced, mask, prior [, coarse]")
    p.add_argument("--val-data", default=None, help="optional .npz for the validation loss")
    p.add_argument("--config", default=None, help="CascadeConfig as JSON")
    p.add_argument("--stage", type=int, choices=(1, 2), required=True)
    p.add_argument("--out", required=True, help="checkpoint path (resumed from when present)")
    p.add_argument("--steps", type=int, default=None, help="override the stage's total steps")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def _load_npz(path) -> dict | None:
    if path is None:
        return None
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def main(argv=None) -> int:
    """Command-line entry point; joins a process group when WORLD_SIZE > 1."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    cfg = json.loads(Path(args.config).read_text()) if args.config else {}
    config = CascadeConfig.from_dict(cfg)
    if args.steps is not None:
        config.stage(args.stage).steps = args.steps
    device = resolve_device(args.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        _, history = train_stage(args.stage, _load_npz(args.data), config, val_data=_load_npz(args.val_data),
                                 device=device, checkpoint_path=args.out, progress=not args.no_progress,
                                 checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                                 max_seconds=args.max_seconds)
        if _dist_info()[0] == 0 and len(history):
            print(f"stage {args.stage}: step {int(history.step.iloc[-1])} loss {history.loss.iloc[-1]:.5g}")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
