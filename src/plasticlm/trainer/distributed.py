"""Scale-out on torch.distributed: the worker side (process group, gradient averaging) and the
launcher (torchrun with elastic restarts).

Data parallelism replicates the weights and averages gradients with one all-reduce per step,
after the whole segment sweep: exact segment BPTT runs one backward pass per segment, and
DDP's reducer would all-reduce after each of them. ``dist.fsdp`` shards weights, gradients and
optimizer state with FSDP2 instead. Each rank reads its own rows (``build_stream(rank=...)``).
"""
from __future__ import annotations

import datetime
import os
import socket
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, backend: str, device: torch.device) -> "Dist":
        """Join the process group torchrun describes in the environment; a plain process is rank 0 of 1."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        if not dist.is_initialized():
            if backend == "auto":
                backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=10))
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, *values: float, device=None) -> list[float]:
        """Sum plain numbers over ranks (one all-reduce)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def average_gradients(self, params, scale: float = 1.0) -> None:
        """grad <- mean over ranks of (scale * grad), for replicated parameters, in one all-reduce."""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]) * (scale / self.world_size)
        if self.enabled:
            dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def shard_fsdp(model: torch.nn.Module, methods: tuple[str, ...] = ("hidden", "gates")) -> torch.nn.Module:
    """FSDP2 over the whole model as one unit; its non-forward entry points unshard too."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    fully_shard(model)
    for name in methods:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    return model


# -- launcher ------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_args(nproc: int, max_restarts: int, program: list[str], port: int | None = None) -> list[str]:
    """Arguments for ``torch.distributed.run`` on this node: c10d rendezvous on a free local port."""
    return ["--nnodes=1", f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port or _free_port()}",
            "--monitor-interval=0.5", *program]


def launch(nproc: int, max_restarts: int, program: list[str]) -> int:
    """Run ``program`` (a script path or ``-m module`` plus its arguments) on ``nproc`` workers.

    Elastic restarts: when a worker dies, torchrun stops the others and starts all of them
    again, up to ``max_restarts`` times; the trainer resumes from the newest checkpoint. On
    current torch a restarted gloo group can fail to connect through the rendezvous' shared
    TCP store, so each round gets its own store (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    """
    if nproc < 1 or max_restarts < 0:
        raise ValueError(f"--nproc must be >= 1 and --max-restarts >= 0, got {nproc}, {max_restarts}")
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(torchrun_args(nproc, max_restarts, program))
    try:
        run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = f"killed by signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
        print(f"plasticlm: worker rank {rank} failed ({how}) and no restarts are left "
              f"(--max-restarts={max_restarts}); the job stopped. Rerun the same command to resume from the "
              "newest checkpoint.", file=sys.stderr)
        return 1
    return 0
