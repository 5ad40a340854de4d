"""The common grid of the cascade: resampling, intensity units and the way back to the template grid.

Every subject's images are on the template grid (an object with ``shape``,
``voxel_mm`` and ``affine``, such as :class:`refacelib.data.template.Template`).
The cascade works on that grid resampled to ``cascade.voxel_mm`` (the *common
grid*), with intensities divided by ``INTENSITY_SCALE`` times the median of the
brain, which every defacing method leaves in place.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["INTENSITY_SCALE", "common_grid", "zoom_to_shape", "subject_scale", "intensity_match", "apply_match",
           "full_resolution"]

#: Intensities on the common grid are image / (INTENSITY_SCALE * median brain intensity).
INTENSITY_SCALE = 2.5


def common_grid(template, voxel_mm: float) -> tuple[float, np.ndarray, tuple]:
    """Zoom factor from the template grid to the common grid, its affine and shape."""
    zoom = template.voxel_mm / float(voxel_mm)
    shape = tuple(int(round(n * zoom)) for n in template.shape)
    affine = template.affine.copy()
    affine[:3, :3] = affine[:3, :3] / zoom
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (1.0 / zoom - 1.0) / 2.0) * zoom
    return zoom, affine, shape


def zoom_to_shape(array: np.ndarray, shape: tuple, *, order: int) -> np.ndarray:
    """``array`` resampled to ``shape`` (in float32, spline ``order``, grid mode); as is when it has that shape."""
    if array.shape == tuple(shape):
        return array
    factors = [n / m for n, m in zip(shape, array.shape)]
    out = ndimage.zoom(array.astype(np.float32), factors, order=order, grid_mode=True, mode="nearest")
    return out


def subject_scale(image_tpl: np.ndarray, brain_tpl: np.ndarray) -> float:
    """Median intensity of the brain (present in every defaced version).

    Examples
    --------
    >>> subject_scale(np.full((4, 4, 4), 3.0), np.ones((4, 4, 4), bool))
    3.0
    """
    inside = image_tpl[brain_tpl & (image_tpl > 0)]
    return float(np.median(inside)) if inside.size else 1.0


def intensity_match(defaced: np.ndarray, average: np.ndarray, head: np.ndarray, mask: np.ndarray, *,
                    n_quantiles: int = 33) -> np.ndarray:
    """Monotone intensity map from the average head to a defaced head (quantile matching).

    Fitted on the template's head voxels that the method kept, less those that touch
    the removal mask (``head & ~dilate(mask)``, both images on one grid): resampling
    blends the removed voxels' zeros into the kept voxels along the cut, and for a
    skull-stripped image, whose kept voxels are the brain, that edge is a large share
    of them and pulls the low quantiles down (on half of the quick null phantom's test
    subjects it darkened the skull-stripped matched average's skin, and its face MSD was
    4.8 mm (median) with that edge in the fit, 1.5 mm without; pydeface's 1.2 mm either way).
    The ``n_quantiles`` quantiles (2nd to 98th
    percentile) of the average head are paired with those of the defaced
    image, so a contrast change that one ratio cannot match (an external
    site's gamma) is matched too, and brightness is not something a refacing
    model can win on. Returns a (2, K) array of knots ``(x, y)`` through the
    origin for :func:`apply_match`.

    Examples
    --------
    >>> head = np.ones((4, 4, 4), bool); mask = np.zeros_like(head); mask[0] = True
    >>> avg = np.linspace(1, 2, 64).reshape(4, 4, 4)
    >>> knots = intensity_match(3 * avg, avg, head, mask)
    >>> float(apply_match(np.array([1.5]), knots)[0])
    4.5
    """
    mask = np.asarray(mask, bool)
    sel = head & ~ndimage.binary_dilation(mask, structure=np.ones((3,) * mask.ndim, bool)) & (average > 0)
    if not sel.any():
        return np.array([[0.0, 1.0], [0.0, 1.0]], np.float64)
    qs = np.linspace(0.02, 0.98, int(n_quantiles))
    xq, idx = np.unique(np.quantile(average[sel].astype(np.float64), qs), return_index=True)
    yq = np.maximum.accumulate(np.quantile(defaced[sel].astype(np.float64), qs)[idx])
    keep = xq > 0
    return np.stack([np.concatenate([[0.0], xq[keep]]), np.concatenate([[0.0], yq[keep]])])


def apply_match(values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Apply :func:`intensity_match`'s map: piecewise linear between knots, proportional beyond the last.

    Examples
    --------
    >>> apply_match(np.array([0.5, 4.0]), np.array([[0.0, 1.0, 2.0], [0.0, 2.0, 3.0]])).tolist()
    [1.0, 6.0]
    """
    x, y = np.asarray(knots[0], np.float64), np.asarray(knots[1], np.float64)
    v = np.asarray(values, np.float64)
    out = np.interp(v, x, y)
    beyond = v > x[-1]
    if beyond.any():
        out[beyond] = v[beyond] * (y[-1] / x[-1] if x[-1] > 0 else 1.0)
    return out.astype(np.float32)


def full_resolution(common: np.ndarray, prior: np.ndarray, average_tpl: np.ndarray, template, *,
                    average_norm: float, match: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """A cascade output on the template grid, in the example's intensity unit.

    The cascade learns a residual over the prior at the common grid's
    resolution; the detail finer than that grid comes from the full-resolution
    average head mapped by the example's intensity map:
    ``apply_match(average_tpl / average_norm, match) + zoom(common - prior)``.
    An untrained cascade (output = prior) returns exactly the matched average
    head at full resolution: the average-face baseline is this function with
    ``common = prior``. With ``mask`` (the removal mask on the common grid) only the generated
    residual inside it is upsampled: outside it the cascade's output is the defaced image,
    whose difference from the prior must not bleed into the mask's border by interpolation.

    Examples
    --------
    >>> class T: shape = (4, 4, 4)
    >>> avg = np.full((4, 4, 4), 2.0, np.float32)
    >>> knots = np.array([[0.0, 1.0], [0.0, 1.5]])
    >>> out = full_resolution(np.ones((2, 2, 2)), np.ones((2, 2, 2)), avg, T, average_norm=2.0, match=knots)
    >>> float(out.min()), float(out.max())
    (1.5, 1.5)
    """
    residual = np.asarray(common, np.float32) - np.asarray(prior, np.float32)
    if mask is not None:
        residual = np.where(np.asarray(mask, bool), residual, np.float32(0))
    residual = zoom_to_shape(residual, template.shape, order=1)
    return (apply_match(np.asarray(average_tpl, np.float32) / np.float32(average_norm), match)
            + residual).astype(np.float32)
