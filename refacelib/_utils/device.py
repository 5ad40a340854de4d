"""Device selection and mixed precision, so no module hard-codes a device.

Examples
--------
>>> resolve_device("cpu")
device(type='cpu')
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["resolve_device", "autocast_context"]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device`.

    Parameters
    ----------
    device : str, torch.device or None
        ``"auto"`` (or None) picks CUDA when available, else CPU. Anything
        else (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is passed to torch.

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        When CUDA is requested but not available.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {dev} requested but CUDA is not available")
    return dev


def autocast_context(device: str | torch.device, enabled: bool = True):
    """Mixed-precision context: bf16 autocast on CUDA, a no-op elsewhere.

    Parameters
    ----------
    device : str or torch.device
        The device the computation runs on.
    enabled : bool
        False gives a no-op context on every device.

    Returns
    -------
    contextlib.AbstractContextManager
    """
    dev = torch.device(device)
    if enabled and dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
