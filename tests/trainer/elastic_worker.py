"""torchrun worker for the elastic tests: `plasticlm train` with one extra stream kind.

'parking_bytes' is the bytes stream, except that on the first attempt (TORCHELASTIC_RESTART_COUNT
0) rank 1 stops at batch PARK_AT, writes its pid to PARK_FILE and waits there for the test to
SIGKILL it. A restarted worker never parks, and without PARK_FILE nobody does.
"""
import os
import sys
import time
from pathlib import Path

from plasticlm.cli import main
from plasticlm.tokenizer import ByteTokenizer
from plasticlm.trainer.stream_kinds import _byte_stream, register_stream


class Parking:
    def __init__(self, inner, rank):
        self.inner, self.rank, self.n = inner, rank, 0

    def next_batch(self):
        self.n += 1
        park = os.environ.get("PARK_FILE")
        if (park and self.rank == 1 and self.n == int(os.environ["PARK_AT"])
                and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"):
            Path(park + ".tmp").write_text(str(os.getpid()))
            os.replace(park + ".tmp", park)
            time.sleep(300)
        return self.inner.next_batch()

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "n": self.n}

    def load_state_dict(self, state):
        self.inner.load_state_dict(state["inner"])
        self.n = state["n"]


register_stream("parking_bytes", lambda data, **kw: Parking(_byte_stream(data, **kw), kw["rank"]),
                lambda data: ByteTokenizer())

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:], "--no-progress"]))
