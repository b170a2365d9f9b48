"""The training loop: one optimizer step per batch of whole sequences, resumable to the bit.

Each step (``bptt: whole``, the default) takes B whole sequences from the stream and
backpropagates the weighted loss through each of them exactly (segment BPTT, or plain autograd
with ``backprop: full``), adds the gradient-length proxy, averages gradients over ranks, clips,
and steps AdamW unless the loss or the gradient norm is not finite (then the step is skipped on
every rank and counted). ``bptt: window`` is truncated BPTT instead: each batch is cut into
windows, one optimizer step per window, the recurrent state carried detached between them.
Everything the next step depends on (weights, optimizer, step, RNG, data cursor, the window in
progress and its carried state) goes into the checkpoint, so a resumed run repeats the
uninterrupted one exactly.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import torch

from .. import archs
from ..checkpoint import WEIGHTS, check_tensors, read_checkpoint, save_weights
from ..data.batch import Batch
from ..device import free_bytes, pick_device
from ..files import DataError, read_json
from ..state import State
from . import run_state as ck
from .config import TrainConfig, changed_on_resume, to_dict
from .distributed import Dist, shard_fsdp
from .losses import band_edges, proxy_penalty, ramp_weights, read_weight, retention_mass
from .metrics import RunLogger, read_metrics
from .segment import activations_fit, segment_backward, segment_loss
from .stream_kinds import build_stream, stream_tokenizer


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); the last checkpoint is intact."""


class Stopped(Exception):
    """SIGTERM: a checkpoint was saved at ``step``."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {path}")
        self.step, self.path = step, path


def param_groups(model: torch.nn.Module, weight_decay: float):
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and "embed" not in n)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def lr_at(step: int, cfg: TrainConfig) -> float:
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "wsd":
        decay_start = cfg.steps - max(1, round(o.decay_fraction * cfg.steps))
        if step < decay_start:
            return o.lr
        progress = (step - decay_start + 1) / max(1, cfg.steps - decay_start)
        return o.lr * (1 - (1 - o.min_lr_ratio) * progress)
    progress = (step - o.warmup_steps) / max(1, cfg.steps - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


class Trainer:
    """Trains ``cfg``; see the module docstring.

    ``on_eval(step, valid_loss)`` runs after each evaluation: it may raise (e.g. to prune a tuning
    trial) or return True to end the run there (e.g. a target accuracy reached). ``model`` and
    ``tokenizer`` train given objects instead of building them from the config (the model must be
    of ``cfg.arch`` with config ``cfg.model``), e.g. to fine-tune a loaded checkpoint on a task.
    """

    def __init__(self, cfg: TrainConfig, *, progress: bool = True, on_eval=None, model=None, tokenizer=None):
        self.cfg, self.progress, self.on_eval = cfg, progress, on_eval
        self.device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.dist = Dist.from_env(cfg.dist.backend, self.device)
        torch.manual_seed(cfg.seed)
        self.tokenizer = tokenizer or stream_tokenizer(cfg.data)
        if cfg.model.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size={cfg.model.vocab_size} does not match the tokenizer of data.kind="
                             f"{cfg.data.kind!r} ({self.tokenizer.vocab_size} tokens)")
        if model is not None and (archs.arch_of(model) != cfg.arch or model.config != cfg.model):
            raise ValueError(f"the model given is a {archs.arch_of(model)!r} with another config than the run's "
                             f"arch={cfg.arch!r} model")
        model = archs.build(cfg.arch, cfg.model) if model is None else model
        if cfg.checkpoint.init_from:
            weights = ck.load_weights(cfg.checkpoint.init_from)
            check_tensors(weights, archs.meta_state_dict(cfg.arch, cfg.model),
                          f"checkpoint.init_from={cfg.checkpoint.init_from}")
            model.load_state_dict(weights)
        self.model = model.to(self.device)
        bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        self.reconstruct_note = ""
        self._choose_reconstruct()  # a probe forward of the plain model: before compiling and sharding it
        if cfg.compile:
            for block in getattr(model, "blocks", []):
                for m in block.children():
                    m.compile()
        self.fsdp = cfg.dist.fsdp and self.dist.enabled
        if self.fsdp:
            shard_fsdp(self.model)
        self.opt = torch.optim.AdamW(param_groups(self.model, cfg.optim.weight_decay), lr=cfg.optim.lr,
                                     betas=(cfg.optim.beta1, cfg.optim.beta2), fused=self.device.type == "cuda")
        self.stream = build_stream(cfg.data, split="train", rank=self.dist.rank, world_size=self.dist.world_size,
                                   seed=cfg.seed)
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.horizon = cfg.loss.proxy_horizon or cfg.data.seq_len
        self.edges = band_edges(self.horizon, cfg.loss.proxy_bands)
        # What a checkpoint restores:
        self.step = self.tokens = self.skipped = self.bad_in_row = 0
        self.state: State | None = None  # bptt=window: the state carried into the next window
        self.positions: torch.Tensor | None = None  # (B,) tokens each row has read of its sequence
        self.pending: Batch | None = None  # bptt=window: the batch whose windows are being trained on
        self.pending_cursor: dict | None = None  # the stream's state before it (to rebuild it on resume)
        self.pending_pos = 0  # where its next window starts
        self.stop_requested = False
        self.stopped_early = False  # on_eval ended the run before cfg.steps
        self.resumed_from = None
        latest = ck.latest_checkpoint(self.ckpt_root)
        if latest is not None and cfg.checkpoint.resume:
            self.load_checkpoint(latest)
            self.resumed_from = latest
        elif latest is not None:
            raise ValueError(f"{self.ckpt_root} holds checkpoints of an earlier run and checkpoint.resume is false: "
                             "choose another out_dir, or delete them to start over")

    # -- one step ---------------------------------------------------------------------------------

    def next_batch(self) -> Batch:
        """What the next optimizer step trains on: the stream's next batch of whole sequences or,
        with bptt=window, the next window of one."""
        if self.cfg.bptt == "whole":
            return self.stream.next_batch()
        if self.pending is None:
            self.pending_cursor = self.stream.state_dict()
            self.pending, self.pending_pos = self.stream.next_batch(), 0
        b, a = self.pending, self.pending_pos
        width = int(b.row_lengths().max())  # windows past every row's end would only read padding
        end = min(a + self.cfg.window, width)
        self.pending_pos = end
        if end >= width:
            self.pending = None
        return b.window(a, end)

    def _start_state(self, batch: Batch):
        B, T = batch.tokens.shape
        if self.positions is None or self.positions.shape[0] != B:
            self.positions = torch.zeros(B, dtype=torch.long, device=self.device)
        self.positions = torch.where(batch.reset, torch.zeros_like(self.positions), self.positions)
        if self.cfg.bptt == "whole":
            return None  # every row is a whole sequence: the model starts from its empty state
        if self.state is None or self.state.batch_size != B:
            self.state = self.model.init_state(B)
            if not hasattr(self.state, "reset"):
                raise ValueError(f"arch {self.cfg.arch!r} keeps a state without per-row reset "
                                 f"({type(self.state).__name__}): train it with bptt=whole")
        return self.state.reset(batch.reset)

    def _choose_reconstruct(self) -> None:
        """Reversible blocks under the segment trainer store a segment's activations when they fit
        (one forward less per segment), and rebuild them from the outputs when they do not."""
        cfg, model = self.cfg, self.model
        if not (getattr(model, "config", None) is not None and getattr(model.config, "reversible", False)
                and cfg.backprop == "segment"):
            return
        if cfg.reconstruct != "auto":
            model.reconstruct = cfg.reconstruct == "rebuild"
            return
        with self.autocast():
            fit, need, budget = activations_fit(model, cfg.data.batch_size // self.dist.world_size, cfg.segment_len)
        model.reconstruct = not fit
        self.reconstruct_note = (f"reconstruct={'store' if fit else 'rebuild'}: one segment's activations "
                                 f"~{need / 2**20:,.0f} MiB, a quarter of free memory {budget / 2**20:,.0f} MiB")

    def _storage(self, B: int, T: int) -> str:
        if self.cfg.storage != "auto" or self.device.type != "cuda":
            return "device" if self.cfg.storage == "auto" else self.cfg.storage
        per_boundary = sum(s.numel() * s.element_size() for s in self.model.init_state(B).tensors())
        need = per_boundary * -(-T // self.cfg.segment_len)
        return "host" if need > free_bytes(self.device) / 4 else "device"

    def train_step(self, batch: Batch) -> dict:
        cfg, model = self.cfg, self.model
        batch = batch.to(self.device)
        state = self._start_state(batch)
        B, T = batch.tokens.shape
        weights = batch.weights.float()
        if cfg.loss.ramp_tokens:
            weights = weights * ramp_weights(self.positions, T, cfg.loss.ramp_tokens, cfg.loss.ramp)
        lr = lr_at(self.step, cfg)
        for g in self.opt.param_groups:
            g["lr"] = lr
        # Global token normalisation: every rank's loss is divided by its own weight total, so its
        # gradient is scaled by local_total * world / global_total before the ranks are averaged.
        local_total = float(weights.sum())
        (global_total,) = self.dist.sum(local_total, device=self.device)
        scale = local_total * self.dist.world_size / global_total if global_total > 0 else 0.0
        if self.fsdp:  # FSDP2 averages the ranks' gradients itself, unweighted (exact when totals agree)
            scale = 1.0 if local_total > 0 else 0.0
        record = {}
        if hasattr(model, "gates") and (cfg.loss.proxy_weight > 0 or (self.step + 1) % cfg.loss.proxy_every == 0):
            record.update(self._proxy(batch.tokens[:, :cfg.loss.proxy_probe], state, scale))
        with self.autocast():
            if local_total <= 0:  # nothing to learn from on this rank: only carry the state on (windows)
                loss, new_state = torch.zeros((), device=self.device), None
                if cfg.bptt == "window":
                    with torch.no_grad():  # read in segments: no logits, one segment's activations
                        new_state = state
                        for a in range(0, T, cfg.segment_len):
                            new_state = model.hidden(batch.tokens[:, a:a + cfg.segment_len], new_state)[1]
            elif cfg.backprop == "segment":
                loss, new_state = segment_backward(model, batch.tokens, batch.targets, cfg.segment_len, weights,
                                                   state, return_state=True, storage=self._storage(B, T))
            else:
                logits, new_state = model(batch.tokens, state)
                loss = segment_loss(logits, batch.targets, weights, weights.sum())
                loss.backward()
                loss = loss.detach()
        if self.dist.enabled and not self.fsdp:
            self.dist.average_gradients(model.parameters(), scale)
        loss_sum, stop = self.dist.sum(float(loss) * local_total, float(self.stop_requested), device=self.device)
        self.stop_requested = stop > 0  # one rank's SIGTERM stops them all at the same step
        weightless = global_total <= 0  # e.g. every row inside a Rosetta header: read, but nothing to learn
        loss = None if weightless else loss_sum / global_total
        gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf")))
        finite = weightless or (math.isfinite(loss) and math.isfinite(gnorm))  # the same on every rank
        if weightless:
            pass  # no optimizer step: there is no gradient, and Adam's moments must not decay for nothing
        elif finite:
            self.opt.step()
            self.bad_in_row = 0
        else:
            self.skipped += 1
            self.bad_in_row += 1
        self.opt.zero_grad(set_to_none=True)
        if new_state is not None and cfg.bptt == "window":
            self.state = self._finite_rows(new_state.detach())
        self.positions = self.positions + T
        self.step += 1
        lengths = batch.row_lengths()
        real = int(lengths.sum())
        (real,) = self.dist.sum(real, device=self.device)
        self.tokens += int(real)
        record.update(step=self.step, loss=loss, grad_norm=gnorm, lr=lr, tokens=self.tokens, step_tokens=int(real),
                      positions=B * T * self.dist.world_size, seq_min=int(lengths.min()), seq_max=int(lengths.max()),
                      skipped=self.skipped, skipped_step=not finite)
        if weightless:
            record["weightless"] = True
        return record

    def _check_bad_steps(self, rec: dict) -> None:
        if self.bad_in_row >= self.cfg.max_bad_steps:
            last = ck.latest_checkpoint(self.ckpt_root)
            raise TrainingError(f"{self.bad_in_row} non-finite steps in a row (steps "
                                f"{self.step - self.bad_in_row + 1}..{self.step}: loss {rec['loss']}, grad norm "
                                f"{rec['grad_norm']}); stopping (max_bad_steps={self.cfg.max_bad_steps}). The weights "
                                f"are those before the first of them; last checkpoint: {last or 'none'}")

    def _proxy(self, probe: torch.Tensor, state: State | None, scale: float) -> dict:
        """Retention mass per lag band per layer on the probe; its KL penalty joins the gradient."""
        lc, train = self.cfg.loss, self.cfg.loss.proxy_weight > 0
        with torch.set_grad_enabled(train), self.autocast():
            weighted = getattr(self.cfg.model, "memory", "") == "gated_average"
            if lc.proxy_weighting == "read":
                masses = []
                for i, (q, k, _, log_a, _, _) in enumerate(self.model.memory_inputs(probe, state)):
                    rebias = None  # with bias correction: weigh the read at the horizon, not at the probe
                    if getattr(self.cfg.model, "corrects_bias", False):
                        start = (state.layer(i)["log_gate_prod"] if state is not None
                                 else torch.zeros_like(log_a[:, 0]))
                        rebias = (log_a, start, self.horizon)
                    masses.append(retention_mass(log_a, self.edges, weighted, read_weight(q, k, rebias=rebias)))
            else:
                masses = [retention_mass(g, self.edges, weighted) for g in self.model.gates(probe, state)]
            penalty = proxy_penalty(masses, lc.proxy_target)
            if train and scale > 0:
                (lc.proxy_weight * penalty / scale).backward()  # undone by the gradient scaling
        if self.fsdp and not train:  # FSDP2 leaves the root unsharded after a forward without backward
            self.model.reshard()
        out = {"proxy": float(penalty.detach())}
        for layer, m in enumerate(masses):
            for band, v in enumerate(m.tolist()):
                out[f"retention/L{layer}/band{band}"] = v
        return out

    @staticmethod
    def _finite_rows(state: State) -> State:
        bad = torch.zeros(state.batch_size, dtype=torch.bool, device=state.layers[0].device)
        for s in state.tensors():
            bad |= ~torch.isfinite(s).flatten(1).all(dim=1)
        return state.reset(bad) if bad.any() else state

    # -- evaluation --------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float:
        """Weighted mean next-token loss (nats) of the validation stream's whole sequences, at least
        eval_tokens of them. Segment-trained models read each batch in pieces of segment_len with
        the state carried (memory of one piece, the same loss); others in one forward."""
        cfg, model = self.cfg, self.model
        stream = build_stream(cfg.data, split="valid", rank=self.dist.rank, world_size=self.dist.world_size,
                              seed=cfg.seed)
        piece = cfg.segment_len if cfg.backprop == "segment" else None
        was_training = model.training
        model.eval()
        total = weight = 0.0
        n = max(1, math.ceil(cfg.eval_tokens / (cfg.data.batch_size * cfg.data.seq_len)))
        # Read n batches, and on while fewer than half the asked tokens carried loss weight (a
        # stream may open with unweighted stretches such as a Rosetta header). The weight is
        # summed over ranks each time, so every rank reads the same number of batches.
        for i in range(64 * n):
            if i >= n and self.dist.sum(weight, device=self.device)[0] >= cfg.eval_tokens / 2:
                break
            b = stream.next_batch().to(self.device)
            T = b.tokens.shape[1]
            state = None
            for a in range(0, T, piece or T):
                with self.autocast():
                    logits, state = model(b.tokens[:, a:a + (piece or T)], state)
                ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), b.targets[:, a:a + (piece or T)]
                                                       .flatten(), reduction="none")
                w = b.weights[:, a:a + (piece or T)].flatten().float()
                total += float((ce * w).sum())
                weight += float(w.sum())
        model.train(was_training)
        if self.fsdp:  # FSDP2 leaves the root unsharded after a forward without backward
            model.reshard()
        total, weight = self.dist.sum(total, weight, device=self.device)
        if weight <= 0:
            raise ValueError(f"the {cfg.data.kind!r} validation stream gave no loss-weighted token in {64 * n} "
                             f"batches of {cfg.data.batch_size} x {cfg.data.seq_len}")
        return total / weight

    # -- checkpoints ------------------------------------------------------------------------------

    def _full_state_dicts(self):
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            return get_state_dict(self.model, self.opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.model.state_dict(), self.opt.state_dict()

    def save_checkpoint(self) -> Path:
        d = self.dist
        tmp = self.ckpt_root / f".tmp-step_{self.step:08d}"
        if d.main:
            ck.staging_dir(self.ckpt_root, self.step)
        d.barrier()
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        ck.write_state(tmp, f"rank{d.rank}", {
            "rng": rng, "stream": self.stream.state_dict(), "positions": self.positions,
            "window": None if self.pending is None else {"cursor": self.pending_cursor, "pos": self.pending_pos},
            "state": None if self.state is None else self.state.tensors()})
        model_sd, optim_sd = self._full_state_dicts()  # collective under FSDP
        d.barrier()
        path = self.ckpt_root / f"step_{self.step:08d}"
        if d.main:
            save_weights(tmp, self.cfg.model, model_sd, self.tokenizer, {"arch": self.cfg.arch, "step": self.step},
                         manifest=False)  # commit writes the manifest of every file
            ck.write_state(tmp, "optim", optim_sd)
            ck.write_json(tmp / "trainer.json", {
                "step": self.step, "tokens": self.tokens, "skipped": self.skipped, "bad_in_row": self.bad_in_row,
                "world_size": d.world_size, "config": to_dict(self.cfg)})
            ck.commit(self.ckpt_root, self.step, self.cfg.checkpoint.keep)
        d.barrier()
        return path

    def load_checkpoint(self, path: Path) -> None:
        """Resume from ``path``: verified (every file against the manifest, the weights against this
        run's model), and only with this run's settings, but for those the config allows to change."""
        manifest = ck.verify(path)
        meta = read_json(path / "trainer.json", within=path)
        if meta["world_size"] != self.dist.world_size:
            raise ValueError(f"{path} was written by {meta['world_size']} ranks, this run has {self.dist.world_size}; "
                             "resume with the same number of processes (or start a new out_dir with init_from)")
        changed = changed_on_resume(meta.get("config"), self.cfg)
        if changed:
            names = [k for k, _, _ in changed]
            shown = "; ".join(f"{k} {then!r} -> {now!r}" for k, then, now in changed[:10])
            raise ValueError(f"{path}: this run's settings differ from those of the checkpoint it would resume: "
                             + shown + (f"; and {len(changed) - 10} more" if len(changed) > 10 else "")
                             + f". To start afresh, use another out_dir (or delete {self.ckpt_root}); to continue "
                             f"with the change on purpose, add checkpoint.allow_changed=[{','.join(names)}] (safe for "
                             "settings such as optim.lr or steps; a changed model must still fit the saved weights)")
        for key in ("step", "tokens", "skipped", "bad_in_row"):
            if not isinstance(meta.get(key), int) or meta[key] < 0:
                raise DataError(f"{path / 'trainer.json'}: {key} must be a count >= 0, got {meta.get(key)!r}")
        if meta["step"] != ck.step_of(path):
            raise DataError(f"{path / 'trainer.json'}: step {meta['step']} in a checkpoint named {path.name}")
        weights = read_checkpoint(path, manifest=manifest).tensors
        check_tensors(weights, archs.meta_state_dict(self.cfg.arch, self.cfg.model), str(path / WEIGHTS))
        optim = ck.read_state(path, "optim")
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            set_state_dict(self.model, self.opt, model_state_dict=weights, optim_state_dict=optim,
                           options=StateDictOptions(full_state_dict=True))
        else:
            self.model.load_state_dict(weights)
            try:
                self.opt.load_state_dict(optim)
            except (ValueError, KeyError, TypeError) as e:
                raise DataError(f"{path / 'optim.json'}: does not fit this run's optimizer: {e}") from None
            for p, state in self.opt.state.items():  # torch checks the groups, not the moments' shapes
                for key, t in state.items():
                    if torch.is_tensor(t) and t.dim() and t.shape != p.shape:
                        raise DataError(f"{path / 'optim.safetensors'}: optimizer {key} of shape {tuple(t.shape)} "
                                        f"for a parameter of shape {tuple(p.shape)}")
        mine = ck.read_state(path, f"rank{self.dist.rank}")
        torch.set_rng_state(mine["rng"]["torch"])
        if "cuda" in mine["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(mine["rng"]["cuda"], self.device)
        self.stream.load_state_dict(mine["stream"])
        if mine.get("window") is not None:  # rebuild the batch whose windows were in progress
            self.stream.load_state_dict(mine["window"]["cursor"])
            self.pending_cursor, self.pending = mine["window"]["cursor"], self.stream.next_batch()
            self.pending_pos = mine["window"]["pos"]
        self.positions = None if mine["positions"] is None else mine["positions"].to(self.device)
        if mine["state"] is not None:
            carried = [s.to(self.device) for s in mine["state"]]
            self.state = self.model.init_state(carried[0].shape[0]).with_tensors(carried)
        else:
            self.state = None
        self.step, self.tokens = meta["step"], meta["tokens"]
        self.skipped, self.bad_in_row = meta["skipped"], meta["bad_in_row"]

    # -- the run ----------------------------------------------------------------------------------

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def run(self) -> dict:
        cfg, d = self.cfg, self.dist
        log = RunLogger(self.out, enabled=d.main, tensorboard=cfg.log.tensorboard, total_steps=cfg.steps,
                        start_step=self.step, progress=self.progress)
        if self.resumed_from is not None:
            log.write(f"resumed from {self.resumed_from} (step {self.step})")
        if self.reconstruct_note and self.progress:
            log.write(self.reconstruct_note)
        old = signal.signal(signal.SIGTERM, self._on_sigterm) if threading.current_thread() is threading.main_thread() else None
        t0, start_tokens, saved_at, valid, eval_seconds = time.perf_counter(), self.tokens, None, None, 0.0
        try:
            while self.step < cfg.steps:
                rec = self.train_step(self.next_batch())
                rec["tok_s"] = tps = (self.tokens - start_tokens) / (time.perf_counter() - t0 - eval_seconds)
                if self.step == cfg.steps or (cfg.log.eval_every and self.step % cfg.log.eval_every == 0):
                    e0 = time.perf_counter()
                    valid = rec["valid_loss"] = self.evaluate()
                    eval_seconds += time.perf_counter() - e0
                if rec["skipped_step"]:
                    log.write(f"step {self.step}: non-finite loss {rec['loss']} or grad norm {rec['grad_norm']}: "
                              f"skipped ({self.skipped} so far)")
                if self.step % cfg.log.every == 0 or rec["skipped_step"] or "valid_loss" in rec:
                    log.log(rec)
                lens = f"{rec['seq_min']}" if rec["seq_min"] == rec["seq_max"] else f"{rec['seq_min']}-{rec['seq_max']}"
                log.progress(1, loss="-" if rec["loss"] is None else f"{rec['loss']:.3f}", tok_s=f"{tps:,.0f}",
                             len=lens)
                self._check_bad_steps(rec)
                done = "valid_loss" in rec and self.on_eval is not None and self.on_eval(self.step, valid)
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                    self.save_checkpoint()
                    saved_at = self.step
                if done:
                    self.stopped_early = True
                    break
                if self.stop_requested:
                    path = self.save_checkpoint() if saved_at != self.step else self.ckpt_root / f"step_{self.step:08d}"
                    raise Stopped(self.step, path)
            elapsed = time.perf_counter() - t0 - eval_seconds
            if valid is None:  # resumed from the final checkpoint: nothing left to train
                valid = self.evaluate()
            if saved_at != self.step:
                self.save_checkpoint()
        finally:
            log.close()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        return self._finish(valid, elapsed, start_tokens)

    def _finish(self, valid: float, elapsed: float, start_tokens: int) -> dict:
        cfg, d = self.cfg, self.dist
        summary = {}
        model_sd = self._full_state_dicts()[0] if self.fsdp else self.model.state_dict()  # collective under FSDP
        if d.main:
            mid = save_weights(self.out, cfg.model, model_sd, self.tokenizer, {"arch": cfg.arch, "step": self.step},
                               dtype=cfg.checkpoint.export_dtype, shard_mib=cfg.checkpoint.export_shard_mib)
            losses = [r["loss"] for r in read_metrics(self.out) if r.get("loss") is not None and not r.get("skipped_step")]
            done = self.tokens - start_tokens
            per_byte = getattr(self.tokenizer, "kind", None) == "bytes"
            summary = {"steps": self.step, "tokens": self.tokens, "seconds": round(elapsed, 1),
                       "tok_s": round(done / elapsed) if elapsed > 0 else 0,
                       "params": sum(p.numel() for p in self.model.parameters()),  # global sizes under FSDP too
                       "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                       "valid_loss": valid, "valid_bits_per_byte": valid / math.log(2) if per_byte else None,
                       "skipped_steps": self.skipped, "stopped_early": self.stopped_early,
                       "world_size": d.world_size, "model_id": mid,
                       "reconstruct": getattr(self.model, "reconstruct", None),
                       "checkpoint": str(self.out), "config": to_dict(cfg)}
            (self.out / "summary.json").write_text(json.dumps(summary, indent=1))
        d.barrier()
        return summary


def train(cfg: TrainConfig, progress: bool = True, on_eval=None) -> dict:
    """Train (or resume) as ``cfg`` says; returns the run summary (also in out_dir/summary.json)."""
    trainer = Trainer(cfg, progress=progress, on_eval=on_eval)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()


def run_plan(configs: list[TrainConfig], progress: bool = True) -> list[dict]:
    """Train the stages in order; a stage whose summary says it finished with these settings is not
    run again (with other settings, resuming it says what changed)."""
    summaries = []
    for cfg in configs:
        done = Path(cfg.out_dir) / "summary.json"
        summary = read_json(done) if done.exists() else {}
        if summary.get("steps") == cfg.steps and not changed_on_resume(summary.get("config"), cfg, allowed=False):
            summaries.append(summary)
            continue
        summaries.append(train(cfg, progress=progress))
    return summaries
