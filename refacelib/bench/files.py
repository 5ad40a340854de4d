"""What the pipeline's image files cost: gzip level against size, write and read time.

The pipeline writes every ``.nii.gz`` through :func:`refacelib._utils.io.save_nifti`, which
stores floating-point voxels at gzip level 0 (:data:`refacelib._utils.io.COMPRESSLEVEL`). The
Performance appendix measures that choice against nibabel's default level 1 on one of the
run's own images, in the same process, so the ratio holds on a loaded machine.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["nifti_file_costs"]


def nifti_file_costs(image: np.ndarray, affine: np.ndarray, *, levels=(1, 0), repeats: int = 3) -> pd.DataFrame:
    """Size, write time and read time of one image saved as ``.nii.gz`` at each gzip level.

    One row per level (``level``, ``mb``, ``write_s`` and ``read_s``, the fastest of ``repeats``),
    and each column's ratio to the first level's (``*_ratio``), so the first row is the reference.

    Examples
    --------
    >>> t = nifti_file_costs(np.random.default_rng(0).random((20, 20, 20), np.float32), np.eye(4), repeats=1)
    >>> t["level"].tolist(), bool(t["mb"].iloc[1] >= t["mb"].iloc[0]), float(t["write_s_ratio"].iloc[0])
    ([1, 0], True, 1.0)
    """
    import nibabel as nib

    from refacelib._utils.io import save_nifti

    img = nib.Nifti1Image(np.asarray(image), affine)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            path = Path(tmp) / f"level{level}.nii.gz"
            writes, reads = [], []
            for _ in range(max(1, int(repeats))):
                start = time.perf_counter()
                save_nifti(img, path, compresslevel=level)
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                np.asarray(nib.load(str(path)).dataobj)
                reads.append(time.perf_counter() - start)
            rows.append({"level": int(level), "mb": path.stat().st_size / 1e6, "write_s": min(writes),
                         "read_s": min(reads)})
    out = pd.DataFrame(rows)
    for col in ("mb", "write_s", "read_s"):
        out[f"{col}_ratio"] = out[col] / out[col].iloc[0]
    return out
