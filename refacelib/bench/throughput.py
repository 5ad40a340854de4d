"""Measurements behind the Performance appendix; each returns a tidy DataFrame.

* :func:`training_throughput`: timed training steps of each stage at a
  profile's stage sizes, voxels per second, fp32 and (on CUDA) bf16 autocast.
* :func:`sampling_throughput`: refacing cost per item and per denoising step.
* :func:`count_host_syncs`: host-device synchronisations inside a call.
* :func:`paper_projection`: hours to train and to reface at the ``paper``
  settings, from measured per-step costs.
* :func:`write_results`, :func:`load_results`: the JSON of ``bench/gpu_bench.py``.

The quality side (sampler MSD, surface-distance agreement, chapter costs) is
in :mod:`refacelib.bench.quality`.

Inputs of the throughput measurements are synthetic volumes of the right
shape (the cost of a step does not depend on the voxel values); the stage
sizes of a profile (common grid and face box) are in ``bench/stage_sizes.json``,
written by ``python -m refacelib.bench sizes`` from the template.

Examples
--------
>>> stage_shapes(CascadeConfig(factor=2, box=((0, 8), (0, 4), (4, 12))), (10, 12, 16))
{1: (8, 8, 8), 2: (8, 4, 8)}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from refacelib._utils.device import resolve_device
from refacelib._utils.io import atomic_write_text
from refacelib._utils.machine import cpu_model, ram_gib
from refacelib.diffusion.cascade import CascadeConfig, STAGE_IN_CHANNELS, box_slices, make_unet, stage1_inputs
from refacelib.diffusion.grid import common_grid
from refacelib.diffusion.sample import sample_stage, auto_batch_size, make_sampler, network_evaluations, reface
from refacelib.diffusion.train import train_stage
from refacelib.pipeline.config import load_profile, project_root, runs_root

__all__ = [
    "cpu_model",
    "machine_info",
    "profile_sizes",
    "sized_config",
    "stage_shapes",
    "synthetic_volumes",
    "training_throughput",
    "sampling_throughput",
    "profile_sampling_row",
    "refacing_workload",
    "count_host_syncs",
    "sampling_sync_audit",
    "paper_projection",
    "write_results",
    "load_results",
    "card_slug",
]


# --------------------------------------------------------------------------- machine
def machine_info(device="auto") -> pd.DataFrame:
    """The machine a measurement ran on, as rows ``item, value``.

    Examples
    --------
    >>> info = machine_info("cpu").set_index("item")["value"]
    >>> info["device"], int(info["cpu_cores"]) >= 1
    ('cpu', True)
    """
    import monai

    dev = resolve_device(device)
    info = {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram_gib(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(dev),
    }
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return pd.DataFrame({"item": list(info), "value": [str(v) for v in info.values()]})


def card_slug(device="auto") -> str:
    """File-name label of the device: the GPU's name in lower case, or ``cpu``.

    Examples
    --------
    >>> card_slug("cpu")
    'cpu'
    """
    dev = resolve_device(device)
    if dev.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(dev).lower()
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


# --------------------------------------------------------------------------- stage sizes
def profile_sizes(params: dict, template) -> dict:
    """Common grid and face box of a profile: ``{"grid": [X, Y, Z], "box": [[lo, hi], ...]}``."""
    from types import SimpleNamespace

    # the GPU machine of bench/gpu_bench.py has no imaging packages: only this function needs them
    from refacelib.pipeline import refacing

    cfg = refacing.cascade_config(SimpleNamespace(params=params), template)
    _, _, shape = common_grid(template, params["cascade"]["voxel_mm"])
    return {"grid": [int(s) for s in shape], "box": [list(b) for b in cfg.box]}


def sized_config(params: dict, sizes: dict) -> tuple[CascadeConfig, tuple]:
    """The profile's cascade configuration with a stored face box, and its grid shape."""
    p = params["cascade"]
    cfg = CascadeConfig(stage1=p["stage1"], stage2=p["stage2"], factor=p["factor"],
                        box=tuple(tuple(b) for b in sizes["box"]), seed=int(params.get("seed", 0)))
    return cfg, tuple(int(s) for s in sizes["grid"])


def stage_shapes(config: CascadeConfig, grid_shape) -> dict[int, tuple]:
    """Spatial shape of each stage's network input (stage 1 padded low-res, stage 2 the box)."""
    mult = config.factor * config.stage1.multiple
    low = tuple(-(-int(s) // mult) * config.stage1.multiple for s in grid_shape)
    box = tuple(sl.stop - sl.start for sl in box_slices(config.box, tuple(grid_shape)))
    return {1: low, 2: box}


def synthetic_volumes(grid_shape, n: int, *, config: CascadeConfig, seed: int = 0) -> dict:
    """Random (N, X, Y, Z) original, defaced, mask, prior with the mask filling the face box.

    For timing only: the cost of a network step does not depend on the values.
    """
    rng = np.random.default_rng(seed)
    original = rng.random((n, *grid_shape), dtype=np.float32)
    mask = np.zeros((n, *grid_shape), bool)
    mask[(slice(None), *box_slices(config.box, tuple(grid_shape)))] = True
    prior = np.broadcast_to(original.mean(0), original.shape).copy()
    return {"original": original, "defaced": np.where(mask, 0, original).astype(np.float32), "mask": mask,
            "prior": prior}


def _untrained_models(config: CascadeConfig, device) -> tuple:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return tuple(make_unet(STAGE_IN_CHANNELS[s], stage=config.stage(s)).to(device).eval() for s in (1, 2))


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float:
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


# --------------------------------------------------------------------------- throughput
def training_throughput(config: CascadeConfig, grid_shape, *, stages=(1, 2), steps: int = 3, warmup: int = 1,
                        precisions=None, device="auto", batch_size: int | None = None,
                        compile: bool = False, seed: int = 0) -> pd.DataFrame:
    """Timed training steps of each stage (:func:`refacelib.diffusion.train.train_stage`) on synthetic data.

    Parameters
    ----------
    config : CascadeConfig
        Networks, batch sizes and the face box of the profile.
    grid_shape : tuple
        The common grid.
    steps, warmup : int
        Timed steps after ``warmup`` untimed ones (the median step is reported).
    precisions : sequence of {"fp32", "bf16"}
        Default fp32 and bf16 autocast on CUDA, fp32 elsewhere.
    batch_size : int, optional
        Override the stages' batch size (e.g. a smaller batch on CPU).

    Returns
    -------
    DataFrame
        ``stage, precision, compiled, device, batch_size, timed_steps, shape, voxels_per_item, step_seconds,
        steps_per_s, voxels_per_s, peak_gpu_mib``.
    """
    device = resolve_device(device)
    precisions = precisions or (("fp32", "bf16") if device.type == "cuda" else ("fp32",))
    shapes, rows = stage_shapes(config, grid_shape), []
    for stage in stages:
        for precision in precisions:
            cfg = CascadeConfig.from_dict(config.to_dict())
            st = cfg.stage(stage)
            st.steps = warmup + steps
            st.batch_size = int(batch_size or st.batch_size)
            data = synthetic_volumes(grid_shape, st.batch_size, config=cfg, seed=seed)
            _peak_reset(device)
            _, hist = train_stage(stage, data, cfg, device=device, progress=False, log_every=10**9,
                                  amp=precision == "bf16", compile=compile)
            step_s = float(np.median(np.diff(np.r_[0.0, hist["seconds"].to_numpy()])[warmup:]))
            vox = int(np.prod(shapes[stage]))
            rows.append({"stage": stage, "precision": precision, "compiled": bool(compile), "device": str(device),
                         "batch_size": st.batch_size, "timed_steps": int(steps),
                         "shape": "x".join(map(str, shapes[stage])),
                         "voxels_per_item": vox, "step_seconds": step_s,
                         "steps_per_s": 1 / step_s, "voxels_per_s": st.batch_size * vox / step_s,
                         "peak_gpu_mib": _peak_mib(device)})
            del data, hist
    return pd.DataFrame(rows)


def sampling_throughput(config: CascadeConfig, grid_shape, *, n_items: int = 4, steps: int = 5,
                        batch_size: int | str = "auto", device="auto", compile: bool = False,
                        seed: int = 0) -> pd.DataFrame:
    """Refacing cost with untrained networks of the profile's size (synthetic volumes).

    A one-step warm-up run comes first (cuDNN autotuning, compilation); the
    timed run is :func:`refacelib.diffusion.sample.reface` with DDIM ``steps`` per stage.

    Returns
    -------
    DataFrame, one row
        ``device, compiled, n_items, steps, batch_size, seconds, seconds_per_item,
        seconds_per_item_step, nfe_per_item, peak_gpu_mib``; an item step is one
        network evaluation of one item (``2 * steps + 1`` per item).
    """
    device = resolve_device(device)
    models = _untrained_models(config, device)
    data = synthetic_volumes(grid_shape, n_items, config=config, seed=seed)
    if batch_size == "auto":
        batch_size = auto_batch_size(models, config, tuple(grid_shape), device=device, n_items=n_items)
    args = (data["defaced"], data["mask"], data["prior"], models, config)
    reface(*args, steps=1, n_samples=1, seed=seed, batch_size=batch_size, device=device, compile=compile)
    _peak_reset(device)
    start = time.perf_counter()
    reface(*args, steps=steps, n_samples=1, seed=seed, batch_size=batch_size, device=device, compile=compile)
    seconds = time.perf_counter() - start
    nfe = network_evaluations(steps)
    return pd.DataFrame([{"device": str(device), "compiled": bool(compile), "n_items": n_items, "steps": steps,
                          "batch_size": int(batch_size), "seconds": seconds,
                          "seconds_per_item": seconds / n_items,
                          "seconds_per_item_step": seconds / (n_items * nfe), "nfe_per_item": nfe,
                          "peak_gpu_mib": _peak_mib(device)}])


_SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


def count_host_syncs(fn, *args, cuda: bool | None = None, **kwargs) -> tuple[object, int]:
    """Run ``fn`` and count the host-device synchronisations it asked for.

    On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` reports every
    synchronising call (``.item()``, device-to-host copies, ``nonzero``...).
    Elsewhere the Python-level calls that would synchronise on a GPU
    (``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool``/``float``/``int``
    of a tensor) are counted instead.

    Parameters
    ----------
    fn : callable, called as ``fn(*args, **kwargs)``
    cuda : bool, optional
        Use CUDA's sync debug mode; default: when a tensor argument is on CUDA.

    Returns
    -------
    result, count

    Examples
    --------
    >>> count_host_syncs(lambda x: float(x.sum()) + x.max().item(), torch.ones(3))[1]
    2
    """
    if cuda is None:
        cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in (*args, *kwargs.values()))
    if cuda:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                result = fn(*args, **kwargs)
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # only the per-operation reports; PyTorch also warns once per process that the
        # debug mode itself is a prototype ("Synchronization debug mode is ...")
        return result, sum("called a synchronizing cuda operation" in str(w.message).lower() for w in caught)
    count = [0]
    saved = {name: getattr(torch.Tensor, name) for name in _SYNC_METHODS}

    def counting(original):
        def wrapper(self, *a, **k):
            count[0] += 1
            return original(self, *a, **k)
        return wrapper

    try:
        for name, method in saved.items():
            setattr(torch.Tensor, name, counting(method))
        result = fn(*args, **kwargs)
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)
    return result, count[0]


def sampling_sync_audit(config: CascadeConfig, grid_shape, *, steps: int = 3, device="auto",
                        samplers=("ddim", "ddpm")) -> pd.DataFrame:
    """Host-device synchronisations inside one stage-1 denoising loop (``steps`` steps), per sampler.

    A first run of the same loop, not counted, takes the one-time set-up
    (cuDNN handles, kernels compiled at first use) out of the count.

    Returns
    -------
    DataFrame
        ``sampler, steps, device, syncs`` (0 is the target).
    """
    device = resolve_device(device)
    models = _untrained_models(config, device)
    data = synthetic_volumes(grid_shape, 2, config=config)
    low = stage1_inputs(data["defaced"], data["mask"], data["prior"], factor=config.factor,
                        multiple=config.stage1.multiple, device=device)
    rows = []
    for kind in samplers:
        sched, timesteps, eta = make_sampler(config.stage1, sampler=kind, steps=steps if kind == "ddim" else None,
                                          device=device)
        sampler = (sched, timesteps[:steps], eta)  # DDPM: its first steps of the full schedule
        gen = torch.Generator(device=device)
        gen.manual_seed(0)
        sample_stage(models[0], sampler, low, gen=gen)  # one-time CUDA set-up (cuDNN, kernels built at first use)
        _, syncs = count_host_syncs(sample_stage, models[0], sampler, low, gen=gen, cuda=device.type == "cuda")
        rows.append({"sampler": kind, "steps": len(sampler[1]), "device": str(device), "syncs": syncs})
    return pd.DataFrame(rows)


def refacing_workload(params: dict) -> tuple[int, int]:
    """Test subjects (internal and external) and defacing methods a profile refaces."""
    ph = params.get("phantom", {})
    return int(ph.get("n_test_internal", 0)) + int(ph.get("n_test_external", 0)), len(params["deface"]["methods"])


def paper_projection(training: pd.DataFrame, sampling: pd.DataFrame, params: dict, *, source: str) -> pd.DataFrame:
    """Hours to train both stages and to reface every test subject under every method.

    Training: each stage's ``steps`` times its measured seconds per step
    (bf16 rows when present), scaled linearly to the profile's batch size
    when it was measured at another. Refacing: test subjects x methods x
    ``n_samples`` x ``2 * sample_steps + 1`` network evaluations, each at the
    measured ``seconds_per_item_step`` (:func:`profile_sampling_row`: at the profile's
    ``sample_steps`` where measured).

    Returns
    -------
    DataFrame
        ``source, quantity, hours, basis``.
    """
    p = params["cascade"]
    sampling = profile_sampling_row(sampling, int(p["sample_steps"]))
    prec = "bf16" if (training["precision"] == "bf16").any() else "fp32"
    rows, total = [], 0.0
    for stage in (1, 2):
        st = p[f"stage{stage}"]
        r = training[(training["stage"] == stage) & (training["precision"] == prec)].iloc[0]
        per_step = float(r["step_seconds"]) * st["batch_size"] / float(r["batch_size"])
        hours = st["steps"] * per_step / 3600
        total += hours
        rows.append({"source": source, "quantity": f"train stage {stage}", "hours": hours,
                     "basis": f"{st['steps']} steps x {per_step:.3g} s ({prec}, batch {st['batch_size']}"
                              f"{'' if r['batch_size'] == st['batch_size'] else ', scaled from ' + str(r['batch_size'])})"})
    rows.append({"source": source, "quantity": "train (both stages)", "hours": total, "basis": "sum"})
    (n_test, n_methods), per_nfe = refacing_workload(params), float(sampling["seconds_per_item_step"].iloc[0])
    rows.append({"source": source, "quantity": "reface (all test subjects x methods)",
                 "hours": n_test * n_methods * int(p["n_samples"]) * network_evaluations(p["sample_steps"]) * per_nfe
                 / 3600,
                 "basis": f"{n_test} subjects x {n_methods} methods x {int(p['n_samples'])} samples x "
                          f"{network_evaluations(p['sample_steps'])} evaluations x {per_nfe:.3g} s"})
    out = pd.DataFrame(rows)
    out["hours"] = out["hours"].round(2)
    return out


def profile_sampling_row(sampling: pd.DataFrame, steps: int) -> pd.DataFrame:
    """The sampling measurement (one row) at ``steps`` DDIM steps, uncompiled; else the first uncompiled row.

    The cost of one network evaluation of one item grows as batches shrink, so a
    measurement at the profile's own steps (and the batch it chose) is preferred.

    Examples
    --------
    >>> s = pd.DataFrame({"steps": [5, 50, 50], "compiled": [False, True, False], "seconds_per_item_step": [4, 2, 3]})
    >>> float(profile_sampling_row(s, 50)["seconds_per_item_step"].iloc[0]), int(profile_sampling_row(s, 20)["steps"].iloc[0])
    (3.0, 5)
    """
    plain = sampling[~sampling["compiled"].astype(bool)] if "compiled" in sampling else sampling
    plain = plain if len(plain) else sampling
    at = plain[plain["steps"] == steps] if "steps" in plain else plain.iloc[:0]
    return (at if len(at) else plain).iloc[:1]


# --------------------------------------------------------------------------- results files
def write_results(path: Path, *, machine: pd.DataFrame, tables: dict, meta: dict | None = None) -> Path:
    """Write measurements as JSON: ``{"meta", "machine", "<table>": [records]}``."""
    payload = {"meta": meta or {}, "machine": dict(zip(machine["item"], machine["value"]))}
    payload.update({name: json.loads(df.to_json(orient="records")) for name, df in tables.items()})
    return atomic_write_text(path, json.dumps(payload, indent=1))


def load_results(folder: Path, *, profile: str | None = None) -> dict[str, pd.DataFrame]:
    """Every ``*.json`` of :func:`write_results` in ``folder``, tables stacked with a ``card`` column.

    The card is the GPU name (the device otherwise) of the file's machine; of
    several files of one card, the latest (by its date, then its name) is read.
    ``profile`` keeps only the files measured at that profile's sizes. A JSON
    without a ``machine`` section is another measurement's (the metadata of
    ``registration-<profile>.csv``, the record of the cost curves
    ``costs-<profile>.json``) and is skipped.
    """
    latest: dict[str, tuple] = {}  # card -> (date, file name, data): a newer measurement replaces an older one
    for path in sorted(Path(folder).glob("*.json")):
        data = json.loads(path.read_text())
        if "machine" not in data:
            continue
        if profile is not None and data.get("meta", {}).get("profile") != profile:
            continue
        machine = data.get("machine", {})
        card = machine.get("gpu", machine.get("device", path.stem))
        entry = (data.get("meta", {}).get("date", ""), path.name, data)
        if card not in latest or entry[:2] > latest[card][:2]:
            latest[card] = entry
    stacked: dict[str, list] = {}
    for card, (date, name, data) in latest.items():
        machine = data.get("machine", {})
        path = Path(folder) / name
        stacked.setdefault("machine", []).append(pd.DataFrame([{"card": card, "date": date, "file": path.name,
                                                               **machine}]))
        for name, records in data.items():
            if name not in ("meta", "machine") and isinstance(records, list):
                stacked.setdefault(name, []).append(pd.DataFrame(records).assign(card=card, date=date))
    return {name: pd.concat(dfs, ignore_index=True) for name, dfs in stacked.items()}


# --------------------------------------------------------------------------- command line
def _write_sizes(out: Path, profiles) -> dict:
    sizes = {}
    for profile in profiles:
        from refacelib.data.template import load_template  # imaging packages: see stage_shapes

        params = load_profile(profile)
        cache = runs_root() / ".template-cache"  # the template's brain mask (deepbet), computed once
        template = load_template(params["deface"]["voxel_mm"], cache_dir=cache)
        sizes[profile] = profile_sizes(params, template)
    atomic_write_text(out, "{\n" + ",\n".join(f" {json.dumps(k)}: {json.dumps(v)}" for k, v in sizes.items()) + "\n}\n")
    return sizes


def main(argv=None) -> int:
    """``python -m refacelib.bench sizes``: write ``bench/stage_sizes.json`` from the template."""
    parser = argparse.ArgumentParser(prog="python -m refacelib.bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sizes = sub.add_parser("sizes", help="common grid and face box of each profile -> JSON")
    sizes.add_argument("--out", default=None, help="default: bench/stage_sizes.json")
    sizes.add_argument("--profiles", nargs="+", default=["tiny", "quick", "paper"])
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else project_root() / "bench" / "stage_sizes.json"
    print(json.dumps(_write_sizes(out, args.profiles)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
