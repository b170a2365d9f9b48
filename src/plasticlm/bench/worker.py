"""Run one benchmark job in this (fresh) process: ``python -m plasticlm.bench.worker JOB_JSON``.

Prints one line ``RESULT {json}``; peak resident memory of a fresh process is the job's own.
"""
from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    import torch

    from .jobs import GiB, rss_now, run_job

    job = json.loads(argv[0])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    base = rss_now()
    out = run_job(job, torch.device(job["device"]))
    out["base_rss_GiB"] = round(base / GiB, 3)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
