"""One prepared GPU benchmark: training and sampling cost of the cascade at the paper stage sizes.

Run from the repository root on a machine with one CUDA GPU (time-boxed, about 6 minutes on an H200):

    python bench/gpu_bench.py                 # writes $OUT/<card>-<date>.json, else bench/results/
    python bench/gpu_bench.py --tiny          # the same code paths at the tiny profile's sizes (CPU is fine)

It measures, with ``refacelib.bench`` (the functions the Performance appendix uses):

* training steps/s of both stages at the ``paper`` profile's stage sizes and batch size,
  fp32 and bf16 autocast (``refacelib.diffusion.train.train_stage`` on synthetic volumes);
* sampling throughput: ``refacelib.diffusion.sample.reface`` with ``batch_size="auto"`` (sized to
  the free GPU memory, one full batch of items), DDIM at the profile's ``sample_steps`` and at
  fewer steps (``--sample-steps``), seconds per item and per network evaluation;
* peak GPU memory of each measurement;
* host-device synchronisations inside the denoising loops (CUDA sync debug mode);
* optionally (``--compile``) the same with ``torch.compile``, if time is left.

Stage sizes (common grid and face box) come from ``bench/stage_sizes.json``, so the GPU
machine needs no template or imaging packages: only torch, numpy, pandas, pyyaml, tqdm
and MONAI (carried as a wheel, see bench/README.md).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from refacelib._utils.device import resolve_device  # noqa: E402
from refacelib.bench import throughput as bench  # noqa: E402
from refacelib.pipeline.config import load_profile  # noqa: E402


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny profile sizes and few steps (a CPU check)")
    p.add_argument("--out", default=None, help="output folder (default: $OUT, else bench/results)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (minutes of compilation)")
    p.add_argument("--train-steps", type=int, default=None,
                   help="timed training steps per stage and precision (default: 300 on paper, 2 on tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default: 10; tiny 1)")
    p.add_argument("--sample-steps", default=None,
                   help="DDIM steps per stage to time sampling at, comma-separated (default: the profile's "
                        "sample_steps, then 20, 10 and 3; tiny: 2)")
    return p.parse_args(argv)


def _measure(name, fn, *, log, skipped, start, budget):
    """Run one measurement unless the time box is spent; a failure is recorded, not raised."""
    elapsed = time.perf_counter() - start
    if elapsed > budget:
        skipped.append({"measurement": name, "reason": f"time box: {elapsed:.0f} s > {budget:.0f} s"})
        log(f"skip {name} (time box)")
        return None
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # keep what was measured so far
        skipped.append({"measurement": name, "reason": f"{type(err).__name__}: {err}"})
        log(f"FAILED {name}: {err}\n{traceback.format_exc()}")
        return None
    log(f"{name}: {time.perf_counter() - t0:.1f} s\n{out.to_string()}")
    return out


def main(argv=None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    device = resolve_device(args.device)
    if not args.tiny and device.type != "cuda":
        print("error: the paper-size benchmark needs CUDA (use --tiny for a CPU check)", file=sys.stderr)
        return 2
    profile = "tiny" if args.tiny else "paper"
    params = load_profile(profile)
    sizes = json.loads((ROOT / "bench" / "stage_sizes.json").read_text())[profile]
    config, grid = bench.sized_config(params, sizes)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    start, skipped, tables = time.perf_counter(), [], {}
    steps = args.train_steps or (2 if args.tiny else 300)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 10)
    default_steps = "2" if args.tiny else f"{params['cascade']['sample_steps']},20,10,3"
    sample_steps = [int(x) for x in (args.sample_steps or default_steps).split(",")]
    n_items, auto_fit = (2, None) if args.tiny else (None, None)

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)

    date = _dt.date.today().isoformat()
    slug = bench.card_slug(device) + ("-tiny" if args.tiny else "")
    out_dir = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = bench.machine_info(device)

    def save():
        """Write what was measured so far (a run killed at its limit still leaves a file)."""
        done = {k: v for k, v in tables.items() if v is not None and not k.startswith("sampling_")}
        rows = [v for k, v in tables.items() if v is not None and k.startswith("sampling_") and k != "sampling_compiled"]
        if rows:  # one table, a row per DDIM setting
            done["sampling"] = pd.concat(rows, ignore_index=True)
        if tables.get("sampling_compiled") is not None:
            done["sampling_compiled"] = tables["sampling_compiled"]
        if skipped:
            done["skipped"] = pd.DataFrame(skipped)
        return bench.write_results(out_dir / f"{slug}-{date}.json", machine=machine, tables=done,
                                   meta={"date": date, "profile": profile, "sizes": sizes, "auto_batch_fit": auto_fit,
                                         "seconds": round(time.perf_counter() - start, 1),
                                         "budget_s": args.budget_s, "script": "bench/gpu_bench.py"})

    def measure(name, key, fn):
        tables[key] = _measure(name, fn, log=log, skipped=skipped, start=start, budget=args.budget_s)
        save()

    log(f"profile {profile}: grid {grid}, stage shapes {bench.stage_shapes(config, grid)}, device {device}")
    measure("training", "training", lambda: bench.training_throughput(
        config, grid, steps=steps, warmup=warmup, device=device))
    if n_items is None:  # what fits in memory: one full batch of items (the steady state of a large cohort)
        from refacelib.diffusion.sample import auto_batch_size

        models = bench._untrained_models(config, device)
        auto_fit = auto_batch_size(models, config, grid, device=device, n_items=1024)
        n_items = auto_fit
        del models
        torch.cuda.empty_cache()
        log(f"auto batch size: {auto_fit} items fit; timing {n_items}")
    for k in sample_steps:  # the profile's setting first: the others are cut first by the time box
        measure(f"sampling, DDIM-{k}", f"sampling_{k}", lambda k=k: bench.sampling_throughput(
            config, grid, n_items=n_items, steps=k, batch_size="auto", device=device))
    measure("sync audit", "sync_audit", lambda: bench.sampling_sync_audit(config, grid, steps=3, device=device))
    if args.compile:
        measure("training, torch.compile", "training_compiled", lambda: bench.training_throughput(
            config, grid, steps=steps, warmup=warmup, device=device, precisions=("bf16",), compile=True))
        measure("sampling, torch.compile", "sampling_compiled", lambda: bench.sampling_throughput(
            config, grid, n_items=n_items, steps=sample_steps[0], batch_size="auto", device=device, compile=True))
    path = save()
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
