"""Choosing the device a command runs on, from what a user typed."""
from __future__ import annotations

import os

import torch


def pick_device(name: str, local_rank: int = 0, select: bool = True) -> torch.device:
    """'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N' -> a device, or a ValueError that names it.

    Under torchrun a bare 'cuda' means this process's GPU (``local_rank``); ``select`` makes it the
    current device.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA devices")
        if select:
            torch.cuda.set_device(dev)
    return dev


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors: the CUDA device's free memory, or the machine's available RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
