"""Reading a fresh passage: the AUNN's loss against k online steps, beside a tiny PlasticLM's.

Both models are trained on the same byte-level split of the builtin corpus (the standard
library's docstrings, the end held out) with about the same parameter count and the same
number of training tokens. Then, for held-out passages, each read from a fresh state:

- prequential: bits/byte of each passage while it is read (the AUNN scores each byte, then
  takes k steps on it: dynamic evaluation with chunk_len 1);
- re-read: bits/byte of a second copy of the passage, read right after the first (the AUNN
  reads it at new indices, so only what generalises beyond the index helps);
- memorised (AUNN only): bits/byte of the passage at the indices it was read at.

k = 0 is the AUNN without reading (its predictions for the indices after its training stream).
The unigram line is the byte frequencies of the training split (add-one). Trained models are
kept in --work, so re-running only measures.

    python benchmarks/aunn_reading.py                # about 15 minutes on 2 CPU cores
    python benchmarks/aunn_reading.py --quick        # a smoke run: tiny budgets, minutes
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from plasticlm.aunn import AUNN, AUNNAsLM, AUNNConfig, OfflineConfig, OfflineTrainer, OnlineConfig, load_aunn, save_aunn
from plasticlm.checkpoint import load_model
from plasticlm.data.builtin import builtin_corpus
from plasticlm.lm import PlasticLMAsLM
from plasticlm.tokenizer import ByteTokenizer
from plasticlm.trainer.config import load_config
from plasticlm.trainer.loop import pick_device, train

LN2 = math.log(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--aunn-steps", type=int, default=600, help="offline AdamW steps of the AUNN")
    p.add_argument("--aunn-batch", type=int, default=2048, help="(index, token) pairs per AUNN step")
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--plm-steps", type=int, default=300, help="steps of the tiny PlasticLM recipe (16 x 256 tokens each)")
    p.add_argument("--passages", type=int, default=4, help="held-out passages, read as rows of one batch")
    p.add_argument("--passage-len", type=int, default=129,
                   help="bytes per passage; odd by default, since the copy of a passage L bytes later shares the "
                        "low bits of its index code with the first for every power of two dividing L")
    p.add_argument("--ks", default="0,1,2,4,8", help="online steps per byte to measure")
    p.add_argument("--lrs", default="3e-5,1e-4,3e-4,1e-3", help="online Adam step sizes to measure")
    p.add_argument("--window", type=int, default=16, help="online rehearsal window (OnlineConfig.window)")
    p.add_argument("--decay", type=float, default=0.0, help="online decay toward the trained weights")
    p.add_argument("--device", default="auto")
    p.add_argument("--work", default="runs/bench-aunn", help="where the trained models are kept")
    p.add_argument("--out", default="benchmarks/results", help="where the report goes")
    p.add_argument("--quick", action="store_true", help="tiny budgets, for a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.aunn_steps, args.plm_steps, args.passages, args.passage_len, args.ks, args.lrs = 20, 5, 2, 31, "0,1,2", "1e-3"
        args.work = args.work + "-quick"
    return args


def split(data: torch.Tensor, seq_len: int = 256, valid_fraction: float = 0.02):
    """The split plasticlm.trainer.loop.train makes, so both models train on the same bytes."""
    n_valid = max(seq_len + 1, int(len(data) * valid_fraction))
    return data[:-n_valid], data[-n_valid:]


def train_aunn(args, train_ids, device) -> AUNN:
    work = Path(args.work) / "aunn"
    cfg = AUNNConfig(width=args.width, depth=args.depth)
    ocfg = OfflineConfig(batch_size=args.aunn_batch, steps=args.aunn_steps, lr=2e-3, warmup_steps=20)
    torch.manual_seed(0)
    model = AUNN(cfg).to(device)
    trainer = OfflineTrainer(model, train_ids, ocfg)
    if (work / "trainer.pt").exists():
        trainer.load(work / "trainer.pt")
    if trainer.step_count < ocfg.steps:
        work.mkdir(parents=True, exist_ok=True)
        for _ in tqdm(range(trainer.step_count, ocfg.steps), desc="aunn offline", unit="step"):
            rec = trainer.step()
            if trainer.step_count % 100 == 0:  # an interrupted run resumes from here
                trainer.save(work / "trainer.pt")
                tqdm.write(f"step {rec['step']}: loss {rec['loss']:.3f}")
        trainer.save(work / "trainer.pt")
        save_aunn(work, model, ByteTokenizer())
    model, _, _ = load_aunn(work, device)
    return model


def train_plasticlm(args, device):
    work = Path(args.work) / "plasticlm"
    if not (work / "summary.json").exists():
        cfg = load_config("tiny", [f"steps={args.plm_steps}", f"out_dir={work}", f"device={device}"])
        train(cfg)
    model, _, _ = load_model(work, device)
    return model, json.loads((work / "summary.json").read_text())


def bits(logp: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean bits per byte of targets (B, T) under log-probs (B, T, V)."""
    return float(-logp.gather(-1, targets[..., None]).mean()) / LN2


def measure_aunn(model: AUNN, x: torch.Tensor, k: int, lr: float, args) -> dict:
    """x (B, L): prequential, re-read and memorised bits/byte after k online steps per byte."""
    start = int(model.next_index)
    first = torch.arange(start, start + x.shape[1], device=x.device).expand_as(x)
    if k == 0:  # no reading: every byte is predicted from the trained weights alone
        lm = AUNNAsLM(model)
        s = lm.init_state(x.shape[0])
        lp = lm.log_probs_at(first, s)
        return {"k": 0, "lr": 0.0, "prequential": bits(lp[:, 1:], x[:, 1:]), "reread": bits(lp[:, 1:], x[:, 1:]),
                "memorised": bits(lp, x), "seconds": 0.0}
    lm = AUNNAsLM(model, OnlineConfig(steps=k, lr=lr, window=args.window, decay=args.decay))
    t0 = time.perf_counter()
    lp, s = lm.score(x, lm.init_state(x.shape[0]))
    seconds = time.perf_counter() - t0
    memorised = bits(lm.log_probs_at(first, s), x)
    lp2, _ = lm.score(x, s)
    return {"k": k, "lr": lr, "prequential": bits(lp[:, :-1], x[:, 1:]), "reread": bits(lp2[:, :-1], x[:, 1:]),
            "memorised": memorised, "seconds": round(seconds, 2),
            "read_bytes_per_s": round(x.numel() / seconds, 1)}


def measure_plasticlm(model, x: torch.Tensor) -> dict:
    lm = PlasticLMAsLM(model)
    lp, s = lm.score(x, lm.init_state(x.shape[0]))
    lp2, _ = lm.score(x, s)
    return {"prequential": bits(lp[:, :-1], x[:, 1:]), "reread": bits(lp2[:, :-1], x[:, 1:])}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["aunn"]
    base = [r for r in rows if r["k"] == 0]
    lrs = sorted({r["lr"] for r in rows if r["k"] > 0})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in [(axes[0], "prequential", "while reading the passage"),
                           (axes[1], "reread", "reading it a second time")]:
        for i, lr in enumerate(lrs):
            pts = sorted((r["k"], r[key]) for r in rows if r["lr"] == lr and r["k"] > 0)
            pts = [(0.5, base[0][key])] + pts if base else pts  # k = 0 drawn at 0.5 on the log axis
            ax.plot(*zip(*pts), "o-", color=f"C{i}", label=f"AUNN, Adam lr {lr:g}")
        ax.axhline(results["plasticlm"][key], color="black", label="PlasticLM (no gradient steps)")
        ax.axhline(results["unigram_bits_per_byte"], color="gray", ls="--", label="unigram of the training bytes")
        ks = sorted({r["k"] for r in rows})
        ax.set_xscale("log", base=2)
        ax.set_xticks([max(k, 0.5) for k in ks], [str(k) for k in ks])
        ax.set_xlabel("AUNN online steps per byte read (k)")
        ax.set_title(title)
    axes[0].set_ylabel("bits per byte")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['passages']} fresh {results['passage_len']}-byte passages of held-out text")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    tok = ByteTokenizer()
    data = torch.tensor(tok.encode(builtin_corpus()), dtype=torch.long)
    train_ids, valid_ids = split(data)
    aunn = train_aunn(args, train_ids, device)
    plm, plm_summary = train_plasticlm(args, device)

    # Passages evenly spaced over the held-out text.
    L, P = args.passage_len, args.passages
    starts = torch.linspace(0, len(valid_ids) - L, P).long().tolist()
    x = torch.stack([valid_ids[s:s + L] for s in starts]).to(device)  # (P, L)
    counts = torch.bincount(train_ids, minlength=tok.vocab_size).double() + 1
    unigram = float(-(counts / counts.sum()).log()[x[:, 1:].cpu()].mean()) / LN2

    ks = [int(k) for k in args.ks.split(",")]
    runs = [(0, 0.0)] * (0 in ks) + [(k, float(lr)) for lr in args.lrs.split(",") for k in ks if k > 0]
    rows = []
    for k, lr in tqdm(runs, desc="aunn reading", unit="run"):
        rows.append(measure_aunn(aunn, x, k, lr, args))
        tqdm.write(json.dumps(rows[-1]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    results = {
        "date": datetime.date.today().isoformat(), "device": dev_name, "torch": torch.__version__,
        "command": "python " + " ".join([sys.argv[0]] + sys.argv[1:]) if argv is None else " ".join(argv),
        "commit": commit + ("+uncommitted" if dirty else ""),
        "passages": P, "passage_len": L, "passage_starts_in_heldout": starts,
        "aunn_params": aunn.num_params(), "aunn_config": aunn.config.to_dict(),
        "aunn_offline": {"steps": args.aunn_steps, "batch": args.aunn_batch,
                         "pairs_seen": args.aunn_steps * args.aunn_batch, "stream_tokens": len(train_ids)},
        "online": {"optimizer": "adam", "window": args.window, "decay": args.decay, "chunk_len": 1},
        "plasticlm_params": plm.num_params(), "plasticlm_train": {k: plm_summary[k] for k in ("steps", "tokens", "last_loss", "valid_bits_per_byte")},
        "unigram_bits_per_byte": unigram, "aunn": rows, "plasticlm": measure_plasticlm(plm, x),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from plasticlm.provenance import result_stem

    stem = result_stem(f"aunn_reading_L{L}" + ("_quick" if args.quick else ""))
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    plot(results, out / f"{stem}.png")
    (out / f"{stem}.md").write_text(report(results, stem))
    print(report(results, stem))
    return 0


def report(r: dict, stem: str) -> str:
    lines = [
        "# AUNN: reading a fresh passage by gradient steps, beside a tiny PlasticLM", "",
        f"- date: {r['date']}", f"- device: {r['device']}, torch {r['torch']}", f"- command: `{r['command']}`",
        f"- commit: {r['commit']}", "",
        f"Held-out bytes of the builtin corpus: {r['passages']} passages of {r['passage_len']} bytes, each read "
        f"from a fresh state (rows of one batch). AUNN: {r['aunn_params']:,} parameters "
        f"(width {r['aunn_config']['width']}, depth {r['aunn_config']['depth']}, {r['aunn_config']['index_bits']}-bit index), "
        f"{r['aunn_offline']['steps']} offline steps of {r['aunn_offline']['batch']} pairs "
        f"({r['aunn_offline']['pairs_seen']:,} pairs over a {r['aunn_offline']['stream_tokens']:,}-byte stream); online "
        f"Adam, window {r['online']['window']}, decay {r['online']['decay']}, chunk_len 1. "
        f"PlasticLM: {r['plasticlm_params']:,} parameters, tiny recipe, {r['plasticlm_train']['steps']} steps "
        f"({r['plasticlm_train']['tokens']:,} tokens; validation {r['plasticlm_train']['valid_bits_per_byte']:.3f} bits/byte).",
        "", f"![bits per byte against k]({stem}.png)", "",
        "| model | online lr | k | while reading (bits/byte) | second copy | at its read indices | read speed (bytes/s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in r["aunn"]:
        speed = f"{a['read_bytes_per_s']:,.0f}" if a["k"] else "-"
        lr = f"{a['lr']:g}" if a["k"] else "-"
        lines.append(f"| AUNN | {lr} | {a['k']} | {a['prequential']:.3f} | {a['reread']:.3f} | {a['memorised']:.3f} | {speed} |")
    p = r["plasticlm"]
    lines.append(f"| PlasticLM | - | - | {p['prequential']:.3f} | {p['reread']:.3f} | - | - |")
    lines.append(f"| unigram | - | - | {r['unigram_bits_per_byte']:.3f} | {r['unigram_bits_per_byte']:.3f} | - | - |")
    lines += ["", "k = 0: no reading (the AUNN's predictions at the indices after its training stream). "
              "'Second copy': the passage read again right after itself; the AUNN reads it at new indices. "
              "'At its read indices': the AUNN's loss on the passage at the indices it was read at, after reading "
              "(memorisation, not prediction).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
