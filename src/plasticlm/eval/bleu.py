"""BLEU: English -> German with [SEP] prompting after reading translated examples.

The model reads ``shots`` example pairs, each ``english [SEP] german\\n``, then for every test
sentence continues ``english [SEP]`` greedily from a copy of that state; the output is cut at the
first [SEP], [EOS] or newline. Scored with sacrebleu's ``BLEU().corpus_score(hyps, [refs])`` and
``CHRF()``, signatures reported, beside two baselines: copying the English source, and random
German (words drawn from the read examples' German side, as many as the source has).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .common import copy_state, encode, generate_until, read, special
from .qa import newline_ids
from .registry import Context
from .text import SourceUnavailable
from .results import bar_plot

NAME = "bleu"
SAMPLE = Path(__file__).parent / "data" / "en_de_sample.tsv"


@dataclass
class Config:
    source: str = "hub"
    """'hub' (WMT16 de-en test from the Hugging Face hub), 'sample' (the tiny shipped file), or a TSV
    file of 'english<TAB>german' lines ('#' starts a comment)."""
    shots: int = 32
    """Example pairs read before translating (taken from the start of the data, never tested)."""
    max_sentences: int = 500
    """Test sentences translated (0: all after the shots)."""
    max_new_tokens: int = 128
    """Longest generated translation, in tokens."""

    @classmethod
    def smoke(cls) -> "Config":
        return cls(source="sample", shots=4, max_sentences=4, max_new_tokens=12)

    def validate(self) -> None:
        for name in ("shots", "max_sentences"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"bleu.{name} must be an integer >= 0, got {getattr(self, name)!r}")


def load_tsv(path: str | Path) -> list[tuple[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bleu: pairs file not found: {path}")
    pairs = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ValueError(f"{path}:{n}: expected 'english<TAB>german', got {len(parts)} field(s)")
        pairs.append((parts[0].strip(), parts[1].strip()))
    if not pairs:
        raise ValueError(f"{path}: holds no pair")
    return pairs


def load_hub() -> list[tuple[str, str]]:
    try:
        import datasets

        rows = datasets.load_dataset("wmt/wmt16", "de-en", split="test")
    except Exception as e:  # ImportError, ConnectionError, the hub's HTTP errors, ...
        raise SourceUnavailable(f"cannot load WMT16 de-en from the Hugging Face hub ({type(e).__name__}: {e}); offline, "
                           "pass a TSV of 'english<TAB>german' lines: bleu.source=PATH (or bleu.source=sample)") from None
    return [(r["translation"]["en"], r["translation"]["de"]) for r in rows]


def sacre(hyps: list[str], refs: list[str]) -> dict:
    """BLEU and chrF exactly as sacrebleu's own corpus_score computes them, with signatures."""
    from sacrebleu.metrics import BLEU, CHRF

    bleu, chrf = BLEU(), CHRF()
    b, c = bleu.corpus_score(hyps, [refs]), chrf.corpus_score(hyps, [refs])
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def random_baseline(sources: list[str], vocabulary: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(vocabulary) for _ in s.split()) for s in sources]


def run(ctx: Context, cfg: Config) -> dict:
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        raise ImportError("the bleu suite needs sacrebleu: pip install 'plasticlm[eval]'") from None
    tok, lm = ctx.tokenizer, ctx.lm
    pairs = load_hub() if cfg.source == "hub" else load_tsv(SAMPLE if cfg.source == "sample" else cfg.source)
    shots, test = pairs[:cfg.shots], pairs[cfg.shots:]
    if cfg.max_sentences:
        test = test[:cfg.max_sentences]
    if not test:
        raise ValueError(f"bleu: {cfg.source} has {len(pairs)} pairs, none left after {cfg.shots} shots")
    sep = special(tok, "[SEP]")
    context = [special(tok, "[BOS]")]
    for en, de in shots:
        context += encode(tok, en) + [sep] + encode(tok, de + "\n")
    state = read(lm, context, lm.init_state(1))
    stop = newline_ids(tok) | {sep, special(tok, "[EOS]")}
    hyps = []
    for en, _ in tqdm(test, desc="bleu", disable=not ctx.progress):
        out = generate_until(lm, copy_state(state), encode(tok, en) + [sep], cfg.max_new_tokens, stop)
        hyps.append(tok.decode(out).strip())
    sources, refs = [en for en, _ in test], [de for _, de in test]
    vocab = sorted({w for _, de in shots for w in de.split()}) or sorted({w for r in refs for w in r.split()})
    res = {"source": cfg.source, "sentences": len(test), "shots": len(shots),
           "model": sacre(hyps, refs), "copy_source": sacre(sources, refs),
           "random": sacre(random_baseline(sources, vocab, ctx.seed), refs),
           "examples": [{"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, refs, hyps))[:5]]}
    names = ["model", "copy_source", "random"]
    res["plots"] = [bar_plot(ctx.out_dir / "bleu.png", {"BLEU": {n: res[n]["bleu"] for n in names},
                                                        "chrF": {n: res[n]["chrf"] for n in names}},
                             "score", f"English -> German ({cfg.source}, {len(shots)} shots read)")]
    return res
