"""The proposal's curriculum on the real pretraining streams: traditional -> linked -> shuffled.

A small citation graph is built from the builtin corpus and prepared with `plasticlm prepare`;
a stage list then trains each stage from the previous stage's final weights.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from plasticlm.cli import main
from plasticlm.trainer.config import load_plan

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def prepared_graph(tmp_path_factory):
    from plasticlm.data.builtin import builtin_corpus

    root = tmp_path_factory.mktemp("graph")
    docs = [d for d in builtin_corpus().split("\n\n") if len(d) > 300][:600]
    with open(root / "graph.jsonl", "w") as f:
        for i, d in enumerate(docs):
            cites = [f"d{(i + 1) % len(docs)}", f"d{(i * 7 + 3) % len(docs)}"]
            f.write(json.dumps({"id": f"d{i}", "text": d, "cites": cites}) + "\n")
    code = main(["prepare", str(root / "graph.jsonl"), str(root / "prep"), "--vocab-size", "384",
                 "--fractions", "train=0.5,valid=0.1,test=0.1,holdout=0.3", "--no-progress"])
    assert code == 0
    stages = root / "stages.yaml"
    stages.write_text(f"""out_dir: {root / 'runs'}
stages:
  - recipe: traditional
  - recipe: linked
    overrides: {{data.options: {{min_tokens: 512}}}}
  - recipe: shuffled
    overrides: {{data.options: {{min_tokens: 512, rosetta: 20, rosetta_top: 100, ramp_tokens: 64, pool: 50}}}}
""")
    return root


SMALL = ["model.vocab_size=384", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.chunk_size=16",
         "data.seq_len=1024", "data.batch_size=2", "segment_len=64", "steps=2", "optim.warmup_steps=1",
         "log.eval_every=0", "log.tensorboard=disabled", "checkpoint.every=2", "eval_tokens=128"]


def test_three_stages_each_start_from_the_previous(prepared_graph):
    root = prepared_graph
    plan = load_plan(str(root / "stages.yaml"), [f"data.source={root / 'prep'}", *SMALL])
    assert [c.data.kind for c in plan] == ["traditional", "linked", "shuffled"]
    assert plan[1].checkpoint.init_from == plan[0].out_dir and plan[2].checkpoint.init_from == plan[1].out_dir
    assert main(["train", str(root / "stages.yaml"), f"data.source={root / 'prep'}", *SMALL, "--no-progress"]) == 0
    runs = sorted((root / "runs").iterdir())
    assert [r.name for r in runs] == ["1-traditional", "2-linked", "3-shuffled"]
    weights = [load_file(str(r / "model.safetensors")) for r in runs]
    for prev, nxt in zip(weights, weights[1:]):
        assert prev.keys() == nxt.keys()
        assert not all(torch.equal(prev[k], nxt[k]) for k in prev)  # the stage trained
    for r in runs:
        metrics = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if '"step"' in x]
        assert metrics and all(m["loss"] == m["loss"] for m in metrics if "loss" in m)  # finite, logged
