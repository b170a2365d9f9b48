"""A complete offline AUNN run: text -> byte tokens -> resumable training -> checkpoint and summary."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..tokenizer import ByteTokenizer
from ..device import pick_device
from ..trainer.stream_kinds import load_text
from .config import AUNNRunConfig
from .model import AUNN
from .offline import OfflineTrainer, save_aunn

RUN_CONFIG = "run.json"
TRAINER_STATE = "trainer.pt"


@torch.no_grad()
def next_index_loss(model: AUNN, tokens: torch.Tensor, batch: int = 8192) -> float:
    """Mean loss (nats) of ``tokens`` placed at the indices after the training stream, without
    reading them: how far the index -> token map extends beyond what it was fitted on."""
    model.eval()
    start, total = int(model.next_index), 0.0
    for a in range(0, len(tokens), batch):
        y = tokens[a:a + batch].to(model.head.weight.device)
        idx = torch.arange(start + a, start + a + len(y), device=y.device)
        total += float(F.cross_entropy(model(idx).float(), y, reduction="sum"))
    return total / len(tokens)


def train_run(cfg: AUNNRunConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train as ``cfg`` says (continuing from ``out_dir`` when ``resume``); returns the summary."""
    device = pick_device(cfg.device)
    tok = ByteTokenizer()
    if cfg.model.vocab_size != tok.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} does not match the byte tokenizer's "
                         f"{tok.vocab_size} tokens")
    data = torch.tensor(tok.encode(load_text(cfg.source)), dtype=torch.long)
    n_valid = int(len(data) * cfg.valid_fraction)
    train_ids, valid_ids = data[:len(data) - n_valid], data[len(data) - n_valid:]
    out = Path(cfg.out_dir)
    state_path = out / TRAINER_STATE
    if resume and not state_path.exists():
        raise FileNotFoundError(f"--resume: no trainer state at {state_path}")
    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))

    torch.manual_seed(cfg.train.seed)
    model = AUNN(cfg.model).to(device)
    trainer = OfflineTrainer(model, train_ids, cfg.train)
    if resume:
        trainer.load(state_path)
    log = (out / "metrics.jsonl").open("a" if resume else "w")
    t0, first, last = time.perf_counter(), None, None
    bar = tqdm(range(trainer.step_count, cfg.train.steps), desc="aunn train", unit="step", disable=not progress,
               dynamic_ncols=True, initial=trainer.step_count, total=cfg.train.steps)
    for _ in bar:
        rec = trainer.step()
        first = rec["loss"] if first is None else first
        last = rec["loss"]
        bar.set_postfix(loss=f"{last:.3f}")
        log.write(json.dumps(rec) + "\n")
        log.flush()
        if trainer.step_count % cfg.save_every == 0:
            trainer.save(state_path)  # the checkpoint proper is written once, at the end
    bar.close()
    log.close()
    trainer.save(state_path)
    elapsed = time.perf_counter() - t0
    mid = save_aunn(out, model, tok, {"steps": trainer.step_count})
    memorised = trainer.evaluate()
    summary = {"steps": trainer.step_count, "seconds": round(elapsed, 1), "params": model.num_params(),
               "stream_tokens": len(train_ids), "next_index": int(model.next_index),
               "first_loss": first, "last_loss": last, "memorisation_loss": memorised,
               "next_index_loss": next_index_loss(model, valid_ids) if len(valid_ids) else None,
               "model_id": mid, "checkpoint": str(out), "config": cfg.to_dict()}
    if summary["next_index_loss"] is not None:
        summary["next_index_bits_per_byte"] = summary["next_index_loss"] / math.log(2)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
