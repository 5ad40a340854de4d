"""Array helpers shared by the layers: the bounding box and the largest component of a mask."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["bounding_box", "largest_component"]


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array.

    An empty ``mask`` has no box: ValueError.

    Examples
    --------
    >>> m = np.zeros((6, 6)); m[2:4, 1] = 1
    >>> bounding_box(m, margin=1)
    (slice(1, 5, None), slice(0, 3, None))
    """
    idx = np.nonzero(mask)
    if len(idx[0]) == 0:
        raise ValueError("the mask is empty: it has no bounding box")
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, np.shape(mask)))


def largest_component(mask: np.ndarray, *, connectivity: int = 3) -> np.ndarray:
    """The largest connected component of ``mask`` (the first of equals); an empty mask stays empty.

    ``connectivity``: 3 joins voxels that share a corner (26 neighbours in 3-D),
    1 only those that share a face (6 neighbours).

    Examples
    --------
    >>> m = np.zeros((5, 5), bool); m[0, 0] = m[1, 1] = True; m[3:, 3:] = True
    >>> int(largest_component(m).sum()), int(largest_component(m, connectivity=1).sum())
    (4, 4)
    """
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, min(connectivity, mask.ndim))
    labels, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))
