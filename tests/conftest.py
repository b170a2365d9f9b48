"""Test-wide settings.

The tests use tiny models, for which one intra-op thread is as fast as two, and far faster
when other processes compete for the cores (torch's spinning worker threads then thrash).
Subprocesses started by tests inherit OMP_NUM_THREADS=1 for the same reason.
"""
import os

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
