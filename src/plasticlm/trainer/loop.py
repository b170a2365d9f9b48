"""The training loop: AdamW, warmup + cosine, exact segment-wise BPTT, progress bar, checkpoint."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import save_model
from ..model import PlasticLM
from ..tokenizer import ByteTokenizer
from .config import TrainConfig, to_dict
from .segment import segment_backward


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but this machine has no CUDA device")
    return dev


def load_text(source: str) -> str:
    if source == "builtin":
        from ..data.builtin import builtin_corpus

        return builtin_corpus()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"data.source: {source!r} is neither 'builtin' nor an existing text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data.source {path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise ValueError(f"data.source {path}: the file is empty")
    return text


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def evaluate(model: PlasticLM, tokens: torch.Tensor, seq_len: int, device) -> float:
    """Mean next-token loss (nats) over rows of seq_len tokens, each row read from an empty state."""
    n = (tokens.numel() - 1) // seq_len
    if n < 1:
        raise ValueError(f"validation split holds {tokens.numel()} tokens, fewer than one row of {seq_len + 1}")
    x = tokens[: n * seq_len].view(n, seq_len).to(device)
    y = tokens[1: n * seq_len + 1].view(n, seq_len).to(device)
    total = 0.0
    for i in range(0, n, 16):
        logits, _ = model(x[i:i + 16])
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), y[i:i + 16].flatten(),
                                                   reduction="sum").item()
    return total / y.numel()


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train a model from scratch as ``cfg`` says; returns the run summary (also written to out_dir)."""
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tok = ByteTokenizer()
    if cfg.model.vocab_size != tok.vocab_size:
        raise ValueError(f"model.vocab_size={cfg.model.vocab_size} does not match the byte tokenizer's "
                         f"{tok.vocab_size} tokens")
    data = torch.tensor(tok.encode(load_text(cfg.data.source)), dtype=torch.long)
    n_valid = max(cfg.data.seq_len + 1, int(len(data) * cfg.data.valid_fraction))
    train_ids, valid_ids = data[:-n_valid], data[-n_valid:]
    T, B = cfg.data.seq_len, cfg.data.batch_size
    if len(train_ids) < T + 1:
        raise ValueError(f"data.source holds {len(data)} tokens: too few for rows of {T + 1} plus validation")

    model = PlasticLM(cfg.model).to(device)
    opt = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                            betas=(cfg.optim.beta1, cfg.optim.beta2), fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "metrics.jsonl").open("w")

    losses, t0, seen = [], time.perf_counter(), 0
    bar = tqdm(range(cfg.steps), desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    for step in bar:
        starts = torch.randint(0, len(train_ids) - T - 1, (B,), generator=gen)
        rows = torch.stack([train_ids[s:s + T + 1] for s in starts.tolist()]).to(device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = float(segment_backward(model, rows[:, :-1], rows[:, 1:], cfg.segment_len))
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf")))
        opt.step()
        opt.zero_grad(set_to_none=True)
        seen += B * T
        losses.append(loss)
        tps = seen / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")
        log.write(json.dumps({"step": step + 1, "loss": loss, "grad_norm": gnorm, "lr": lr_at(step, cfg),
                              "tokens": seen, "tok_s": tps}) + "\n")
        log.flush()
    bar.close()
    log.close()
    elapsed = time.perf_counter() - t0

    model.eval()
    valid_loss = evaluate(model, valid_ids[: cfg.eval_tokens + 1], T, device)
    mid = save_model(out, model, tok)
    summary = {"steps": cfg.steps, "tokens": seen, "seconds": round(elapsed, 1), "tok_s": round(seen / elapsed),
               "params": model.num_params(), "first_loss": losses[0], "last_loss": losses[-1],
               "valid_loss": valid_loss, "valid_bits_per_byte": valid_loss / math.log(2),
               "model_id": mid, "checkpoint": str(out), "config": to_dict(cfg)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
