"""Where a result came from: date, machine, software versions, commit and command.

Every stored result (benchmarks, evaluations, experiments) carries this header, so a figure can
be traced to the code and the hardware that produced it.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(SOURCE), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit(short: bool = False) -> str:
    """The commit of the plasticlm source tree, with '-dirty' when tracked files have uncommitted changes."""
    head = _git("rev-parse", *(["--short"] if short else []), "HEAD")
    if not head:
        return "unknown"
    return head + ("-dirty" if _git("status", "--porcelain", "--untracked-files=no") else "")


def machine(device: torch.device | str = "cpu") -> dict:
    """{'device': a readable description, 'hardware': a slug for file names}."""
    device = torch.device(device)
    if device.type == "cuda":
        name = slug = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or platform.machine() or "cpu"
        if os.path.exists("/proc/cpuinfo"):
            with open("/proc/cpuinfo") as f:
                cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
        name = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
        slug = f"cpu-{cpu}-{os.cpu_count()}core"
    return {"device": name, "hardware": re.sub(r"[^a-z0-9]+", "-", slug.lower()).strip("-")}


def provenance(device: torch.device | str = "cpu", command: str | list[str] | None = None) -> dict:
    """The header of a stored result."""
    device = torch.device(device)
    if command is None:
        command = ["plasticlm", *sys.argv[1:]] if Path(sys.argv[0]).name == "plasticlm" else sys.argv
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command if isinstance(command, str) else " ".join(command),
            "commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            **machine(device)}
    if device.type == "cuda":
        meta["cuda"] = torch.version.cuda
        try:
            import fla

            meta["fla"] = getattr(fla, "__version__", "installed")
        except Exception:  # noqa: BLE001 - fla is optional; any import failure means "not used"
            meta["fla"] = None
    elif hasattr(os, "getloadavg"):
        meta["load_average"] = round(os.getloadavg()[0], 2)
    return meta


def result_stem(name: str, device: torch.device | str = "cpu") -> str:
    """The file stem of a stored result: DATE_HARDWARE_NAME (benchmarks/results/ holds them all so)."""
    return f"{datetime.now(timezone.utc).date().isoformat()}_{machine(device)['hardware']}_{name}"
