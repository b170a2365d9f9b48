"""Plasticity probes: does a pattern met only while reading change what the model predicts?

template  A stream of N dialogues ``[USER] message\\n[AI] <marker> <first word of message>\\n``.
          After N of them, for held-out messages never read: is the next token after
          ``[USER] message\\n`` the [AI] tag (argmax), and does the greedy reply follow the
          template (every reply token the argmax)? A curve over N.
drift     Plain sentences, then from mid-stream on a rule: every word ``trigger`` is preceded
          by ``marker`` ("no" -> "bacon no"; ``placement="after"`` gives "no bacon"). After k rule
          occurrences, on held-out sentences cut at the first trigger: is the rule's next word
          (the trigger after the marker, or the marker after the trigger) the greedy
          continuation? A curve over k. A causal model cannot foresee a trigger, so "preceded
          by" is judged on the trigger following the marker.

Each runs on the model, on the same architecture untrained (``ctx.untrained``), and on a
shuffled-control stream holding the same pieces with the pattern broken (template: the tags,
messages and replies in random order; drift: the marker inserted after random words), so an
effect can be told from chance. Scores are teacher-forced greedy matches, which equal greedy
generation's output on the scored tokens.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from .common import copy_state, encode, read, score_targets, special
from .registry import Context
from .results import line_plot
from .text import sentences

NAME = "probes"


@dataclass
class Config:
    probes: list[str] = field(default_factory=lambda: ["template", "drift"])
    """Which probes to run."""
    max_dialogues: int = 256
    """template: dialogues in the stream (checkpoints at 0, 1, 2, 4, ... up to this)."""
    marker: str = "Blorp"
    """template: the fixed word every reply starts with (a nonce word: only reading can teach it)."""
    pre_sentences: int = 200
    """drift: sentences read before the rule starts."""
    max_occurrences: int = 128
    """drift: rule occurrences read (checkpoints at 0, 1, 2, 4, ... up to this)."""
    trigger: str = "no"
    """drift: the word the rule follows."""
    drift_marker: str = "bacon"
    """drift: the word inserted next to every trigger once the rule holds."""
    placement: str = "before"
    """drift: 'before' ("every no is preceded by bacon"; asked: is "no" greedy after "bacon"?) or
    'after' ("every no is followed by bacon"; asked: is "bacon" greedy after "no"?, which must
    override what usually follows a common word)."""
    held_out: int = 32
    """Held-out probes asked at every checkpoint (never part of any stream)."""
    controls: bool = True
    """Also run the shuffled-control stream and the untrained model."""

    @classmethod
    def smoke(cls) -> "Config":
        return cls(max_dialogues=4, pre_sentences=4, max_occurrences=4, held_out=3)

    def validate(self) -> None:
        if self.placement not in ("before", "after"):
            raise ValueError(f"probes.placement must be 'before' or 'after', got {self.placement!r}")
        bad = [p for p in self.probes if p not in ("template", "drift")]
        if bad:
            raise ValueError(f"probes.probes: unknown probe {bad[0]!r}; known: template, drift")
        for name in ("max_dialogues", "max_occurrences", "held_out"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"probes.{name} must be a positive integer, got {getattr(self, name)!r}")


@dataclass
class ProbeStream:
    """A token stream, the positions after each checkpoint count, and what it claims to hold."""

    tokens: list[int]
    checkpoints: dict[int, int]  # count read -> token position just after it
    text: str  # the stream as text, for checking its contents
    held_out: list[Probe]
    held_out_text: list[str]
    claims: dict[str, int]


def counts(n: int) -> list[int]:
    """0, 1, 2, 4, ... up to n (n included)."""
    out, k = [0], 1
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


def first_word(message: str) -> str:
    """The message's first word as written (punctuation dropped, case kept: a copy, not a transformation)."""
    return re.sub(r"[^\w]", "", message.split()[0]) or "x"


@dataclass
class Probe:
    """A held-out question: read ``context``, score ``continuation``; ``parts`` name spans of it."""

    context: list[int]
    continuation: list[int]
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)


def _pools(rng: random.Random, sizes: list[tuple[int, object]]) -> list[list[str]]:
    """Disjoint lists of distinct corpus sentences; sizes = [(n, predicate), ...], filled in order."""
    from ..data.builtin import builtin_corpus

    pool = sorted(set(sentences(builtin_corpus())))
    rng.shuffle(pool)
    used, out = set(), []
    for n, pred in sizes:
        pick = [x for x in pool if x not in used and pred(x)][:n]
        if len(pick) < n:
            raise ValueError(f"probes: need {n} more distinct sentences, the corpus has {len(pick)} left")
        used.update(pick)
        out.append(pick)
    return out


def template_stream(tok, cfg: Config, seed: int, shuffled: bool = False) -> ProbeStream:
    rng = random.Random(seed)
    short = lambda s: len(s.split()) <= 16  # noqa: E731
    held, msgs = _pools(rng, [(cfg.held_out, short), (cfg.max_dialogues, short)])
    user, ai, bos = special(tok, "[USER]"), special(tok, "[AI]"), special(tok, "[BOS]")
    def reply(m: str) -> tuple[list[int], list[int], list[int]]:  # marker, copied word, end: encoded apart
        return encode(tok, f" {cfg.marker}"), encode(tok, f" {first_word(m)}"), encode(tok, "\n")

    units = []
    for m in msgs:
        units += [[user], encode(tok, f" {m}\n"), [ai], sum(reply(m), [])]
    if shuffled:
        rng.shuffle(units)  # same tags, messages and replies; no dialogue structure left
    tokens, checkpoints = [bos], {0: 1}
    for i, u in enumerate(units):
        tokens += u
        if (i + 1) % 4 == 0:
            checkpoints[(i + 1) // 4] = len(tokens)
    want = set(counts(cfg.max_dialogues))
    probes = []
    for m in held:
        mark, word, end = reply(m)
        probes.append(Probe([user] + encode(tok, f" {m}\n"), [ai] + mark + word + end,
                            {"marker": (1, 1 + len(mark)), "copy": (1 + len(mark), 1 + len(mark) + len(word))}))
    return ProbeStream(tokens, {k: v for k, v in checkpoints.items() if k in want}, tok.decode(tokens), probes,
                       held, {"dialogues": cfg.max_dialogues, "user_tags": cfg.max_dialogues,
                              "ai_tags": cfg.max_dialogues})


def drift_stream(tok, cfg: Config, seed: int, shuffled: bool = False) -> ProbeStream:
    rng = random.Random(seed)
    trig = re.compile(rf"\b{re.escape(cfg.trigger)}\b")
    has = lambda s: bool(trig.search(s)) and cfg.drift_marker not in s  # noqa: E731
    held, rule_sents, plain = _pools(rng, [(cfg.held_out, has), (cfg.max_occurrences, has),
                                           (cfg.pre_sentences, lambda s: cfg.drift_marker not in s)])
    bos = special(tok, "[BOS]")
    text = " ".join(plain)
    tokens, checkpoints, occ = [bos] + encode(tok, text), {}, 0
    checkpoints[0] = len(tokens)
    want = set(counts(cfg.max_occurrences))
    for sent in rule_sents:
        if shuffled:  # as many markers as the rule would add, after random words: no rule to find
            words = sent.split(" ")
            spots = set(rng.sample(range(len(words)), min(len(trig.findall(sent)), len(words))))
            pieces = [(w, i in spots) for i, w in enumerate(words)]
            pieces = [(" " + w if i else w, mark) for i, (w, mark) in enumerate(pieces)]
        else:  # split just after every trigger: the marker goes right there
            cuts = [m.end() for m in trig.finditer(sent)]
            bounds = [0] + cuts + [len(sent)]
            pieces = [(sent[a:b], b in cuts) for a, b in zip(bounds, bounds[1:]) if a < b]
        pieces[0] = ((" " if text else "") + pieces[0][0], pieces[0][1])
        for piece, mark in pieces:
            if mark and (shuffled or cfg.placement == "after"):
                piece += " " + cfg.drift_marker
            elif mark:  # the piece ends with the trigger: put the marker just before it
                piece = piece[:len(piece) - len(cfg.trigger)] + cfg.drift_marker + " " + cfg.trigger
            text += piece
            tokens += encode(tok, piece)
            if mark:
                occ += 1
                if occ in want:
                    checkpoints[occ] = len(tokens)
        if occ >= cfg.max_occurrences:
            break
    probes = []
    for s in held:  # ask at the first trigger: is the rule's next word the greedy continuation?
        m = trig.search(s)
        if cfg.placement == "after":
            probes.append(Probe(encode(tok, " " + s[:m.end()]), encode(tok, f" {cfg.drift_marker}")))
        else:
            probes.append(Probe(encode(tok, " " + s[:m.start()] + cfg.drift_marker), encode(tok, f" {cfg.trigger}")))
    return ProbeStream(tokens, checkpoints, text, probes, held,
                       {"rule_occurrences": occ, "pre_rule_sentences": cfg.pre_sentences})


def measure(lm, state, probes: list[Probe]) -> dict[str, float]:
    """Over held-out probes: first-token argmax rate, full greedy match rate, greedy match rate of the
    rest given the first (the template's reply after [AI]), mean log p per token; and for each named
    part, its greedy match rate (``PART_rate``) and mean log p per token (``PART_logp``)."""
    first = full = rest = 0
    lp_sum = n_tok = 0.0
    parts: dict[str, list[float]] = {}
    for p in probes:
        s = read(lm, p.context[:-1], copy_state(state)) if len(p.context) > 1 else copy_state(state)
        seq = torch.tensor(p.context[-1:] + p.continuation, dtype=torch.long).view(1, -1)
        lp, hit, _ = score_targets(lm, seq[:, :-1], seq[:, 1:], s)
        first += bool(hit[0, 0])
        full += bool(hit[0].all())
        rest += bool(hit[0, 1:].all())
        lp_sum += float(lp.sum())
        n_tok += lp.numel()
        for name, (a, b) in p.parts.items():
            acc = parts.setdefault(name, [0.0, 0.0, 0.0])  # hits, log p, tokens
            acc[0] += bool(hit[0, a:b].all())
            acc[1] += float(lp[0, a:b].sum())
            acc[2] += b - a
    n = len(probes)
    out = {"first_token_rate": first / n, "match_rate": full / n, "rest_match_rate": rest / n,
           "logp_per_token": lp_sum / n_tok}
    for name, (hits, lp, toks) in parts.items():
        out[f"{name}_rate"], out[f"{name}_logp"] = hits / n, lp / toks
    return out


def curve(lm, stream: ProbeStream, progress: bool, desc: str) -> dict[int, dict[str, float]]:
    state, pos, out = lm.init_state(1), 0, {}
    for k, end in tqdm(sorted(stream.checkpoints.items()), desc=desc, disable=not progress):
        state = read(lm, stream.tokens[pos:end], state)
        pos = end
        out[k] = measure(lm, state, stream.held_out)
    return out


def run(ctx: Context, cfg: Config) -> dict:
    builders = {"template": template_stream, "drift": drift_stream}
    models = {"model": ctx.lm}
    if cfg.controls and ctx.untrained is not None:
        models["untrained"] = ctx.untrained()
    res, plots = {}, []
    for probe in cfg.probes:
        streams = {"stream": builders[probe](ctx.tokenizer, cfg, ctx.seed)}
        if cfg.controls:
            streams["shuffled"] = builders[probe](ctx.tokenizer, cfg, ctx.seed, shuffled=True)
        res[probe] = {"claims": streams["stream"].claims, "curves": {}}
        for mname, lm in models.items():
            for sname, st in streams.items():
                res[probe]["curves"][f"{mname}/{sname}"] = curve(lm, st, ctx.progress, f"{probe} {mname}/{sname}")
        if probe == "template":
            shown = {"first_token_rate": "next token is [AI]", "rest_match_rate": "greedy reply follows the template",
                     "marker_rate": f"greedy fixed word '{cfg.marker}' after [AI]",
                     "copy_rate": "greedy copied word after the fixed word",
                     "marker_logp": f"log p('{cfg.marker}') per token", "copy_logp": "log p(copied word) per token"}
        else:
            shown = {"match_rate": f"greedy '{cfg.drift_marker}' after '{cfg.trigger}'",
                     "logp_per_token": f"log p('{cfg.drift_marker}') per token"}
        for m, ylabel in shown.items():
            series = {k: (list(v), [x[m] for x in v.values()]) for k, v in res[probe]["curves"].items()}
            plots.append(line_plot(ctx.out_dir / f"probes_{probe}_{m}.png", series,
                                   "dialogues read" if probe == "template" else "rule occurrences read",
                                   ylabel, f"{probe} probe", logx=True))
    res["plots"] = plots
    return res
