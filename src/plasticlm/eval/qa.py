"""Read-then-ask QA ("SQuAD hard"): read all contexts first, ask the questions after.

For each group of paragraphs (an article, or ``group_size`` paragraphs) the model reads, in one
carried state,

    read_first      [BOS] Context: c1 \\n\\n Context: c2 ... then each question
    question_first  all the group's questions, then the contexts, then each question
    read_twice      the contexts twice, then each question
    no_context      nothing: each question alone (the closed-book control)

and answers every question from its own copy of that state, prompted ``Question: q\\nAnswer:``,
greedily, cut at the first newline or [SEP]/[EOS]. Scores are SQuAD v1.1 exact match and F1
with the official normalisation (lowercase, no punctuation, no a/an/the, single spaces), max over
the gold answers, in percent. Order matters for a recurrent memory (Just Read Twice).
"""
from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .common import copy_state, encode, generate_until, read, special
from .registry import Context
from .text import SourceUnavailable
from .results import bar_plot

NAME = "qa"
ORDERS = ("read_first", "question_first", "read_twice", "no_context")
SAMPLE = Path(__file__).parent / "data" / "squad_sample.json"


@dataclass
class Config:
    source: str = "hub"
    """'hub' (SQuAD v1.1 validation from the Hugging Face hub), 'sample' (the tiny shipped file), or a
    path to a file in SQuAD's JSON format."""
    orders: list[str] = field(default_factory=lambda: list(ORDERS))
    """Reading orders to measure (see the module docstring)."""
    group_size: int = 0
    """Paragraphs read before asking (0: all paragraphs of an article)."""
    max_questions: int = 0
    """Stop after this many questions (0: all)."""
    max_answer_tokens: int = 32
    """Longest generated answer, in tokens."""

    @classmethod
    def smoke(cls) -> "Config":
        return cls(source="sample", max_questions=4, max_answer_tokens=8)

    def validate(self) -> None:
        bad = [o for o in self.orders if o not in ORDERS]
        if bad or not self.orders:
            raise ValueError(f"qa.orders: unknown order {bad[0] if bad else '(none given)'!r}; known: {', '.join(ORDERS)}")
        for name in ("group_size", "max_questions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"qa.{name} must be an integer >= 0, got {getattr(self, name)!r}")


# ---- SQuAD v1.1 metric (official normalisation) ------------------------------------------------

def normalize_answer(s: str) -> str:
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """EM and F1 in percent, each the max over a question's gold answers, averaged over questions."""
    if not predictions:
        return {"exact_match": None, "f1": None, "questions": 0}
    em = sum(max(exact_match(predictions[q], g) for g in golds[q]) for q in predictions)
    f = sum(max(f1(predictions[q], g) for g in golds[q]) for q in predictions)
    n = len(predictions)
    return {"exact_match": 100 * em / n, "f1": 100 * f / n, "questions": n}


# ---- data --------------------------------------------------------------------------------------

def parse_squad(doc, where: str) -> list[dict]:
    """SQuAD JSON -> [{title, paragraphs: [{context, qas: [{id, question, answers: [str]}]}]}].
    A malformed file fails naming the file and the JSON path of the problem."""
    def need(obj, key, kind, path):
        if not isinstance(obj, dict) or key not in obj:
            raise ValueError(f"{where}: {path}: missing field {key!r} (SQuAD JSON format expected)")
        if not isinstance(obj[key], kind):
            want = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise ValueError(f"{where}: {path}.{key}: expected {want}, got {type(obj[key]).__name__}")
        return obj[key]

    articles = []
    for i, art in enumerate(need(doc, "data", list, "top level")):
        paras = []
        for j, par in enumerate(need(art, "paragraphs", list, f"data[{i}]")):
            p = f"data[{i}].paragraphs[{j}]"
            qas = []
            for k, qa in enumerate(need(par, "qas", list, p)):
                q = f"{p}.qas[{k}]"
                answers = need(qa, "answers", list, q)
                if not answers:
                    raise ValueError(f"{where}: {q}.answers: empty (SQuAD v1.1 questions have gold answers)")
                texts = [need(a, "text", str, f"{q}.answers[{n}]") for n, a in enumerate(answers)]
                qas.append({"id": str(need(qa, "id", (str, int), q)), "question": need(qa, "question", str, q),
                            "answers": texts})
            paras.append({"context": need(par, "context", str, p), "qas": qas})
        articles.append({"title": art.get("title", f"article {i}"), "paragraphs": paras})
    if not any(p["qas"] for a in articles for p in a["paragraphs"]):
        raise ValueError(f"{where}: holds no question")
    return articles


def load_file(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"qa: SQuAD file not found: {path}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON: line {e.lineno} column {e.colno}: {e.msg}") from None
    return parse_squad(doc, str(path))


def load_hub() -> list[dict]:
    try:
        import datasets

        rows = datasets.load_dataset("rajpurkar/squad", split="validation")
    except Exception as e:  # ImportError, ConnectionError, the hub's HTTP errors, ...
        raise SourceUnavailable(f"cannot load SQuAD from the Hugging Face hub ({type(e).__name__}: {e}); offline, pass a "
                           "local file in SQuAD's JSON format: qa.source=PATH (or qa.source=sample for the tiny "
                           "shipped sample)") from None
    articles: dict[str, dict[str, list]] = {}
    for r in rows:
        paras = articles.setdefault(r["title"], {})
        paras.setdefault(r["context"], []).append({"id": r["id"], "question": r["question"],
                                                   "answers": list(r["answers"]["text"])})
    return [{"title": t, "paragraphs": [{"context": c, "qas": q} for c, q in ps.items()]} for t, ps in articles.items()]


def load(source: str) -> list[dict]:
    if source == "hub":
        return load_hub()
    return load_file(SAMPLE if source == "sample" else source)


def groups(articles: list[dict], group_size: int):
    """Lists of paragraphs read together: each article, cut into ``group_size`` paragraphs if set."""
    for art in articles:
        ps = art["paragraphs"]
        step = group_size or len(ps)
        for a in range(0, len(ps), step):
            yield ps[a:a + step]


# ---- the suite ---------------------------------------------------------------------------------

def newline_ids(tokenizer) -> set[int]:
    """Token ids whose text holds a newline (one byte for bytes, several pieces for BPE)."""
    return {i for i in range(tokenizer.vocab_size) if "\n" in tokenizer.decode([i])}


def reading(order: str, paras: list[dict], tok) -> list[int]:
    ctx = [t for p in paras for t in encode(tok, f"Context: {p['context']}\n\n")]
    qs = [t for p in paras for qa in p["qas"] for t in encode(tok, f"Question: {qa['question']}\n")]
    body = {"read_first": ctx, "question_first": qs + encode(tok, "\n") + ctx, "read_twice": ctx + ctx,
            "no_context": []}[order]
    return [special(tok, "[BOS]")] + body


def run(ctx: Context, cfg: Config) -> dict:
    tok, lm = ctx.tokenizer, ctx.lm
    articles = load(cfg.source)
    stop = newline_ids(tok) | {special(tok, "[SEP]"), special(tok, "[EOS]")}
    golds = {qa["id"]: qa["answers"] for a in articles for p in a["paragraphs"] for qa in p["qas"]}
    out, examples = {}, []
    total = min(len(golds), cfg.max_questions or len(golds))
    bar = tqdm(total=total * len(cfg.orders), desc="qa", unit="question", disable=not ctx.progress)
    for order in cfg.orders:
        preds: dict[str, str] = {}
        for paras in groups(articles, cfg.group_size):
            if len(preds) >= total:
                break
            state = read(lm, reading(order, paras, tok), lm.init_state(1))
            for p in paras:
                for qa in p["qas"]:
                    if len(preds) >= total:
                        break
                    prompt = encode(tok, f"Question: {qa['question']}\nAnswer:")
                    ans = tok.decode(generate_until(lm, copy_state(state), prompt, cfg.max_answer_tokens, stop))
                    preds[qa["id"]] = ans.strip()
                    bar.update()
                    if len(examples) < 5 and order == cfg.orders[0]:
                        examples.append({"question": qa["question"], "gold": qa["answers"], "prediction": ans.strip()})
        out[order] = squad_scores(preds, {q: golds[q] for q in preds})
    bar.close()
    orders = list(out)
    plot = bar_plot(ctx.out_dir / "qa_orders.png", {"exact match": {o: out[o]["exact_match"] for o in orders},
                                                     "F1": {o: out[o]["f1"] for o in orders}},
                    "score (%)", f"read-then-ask QA ({cfg.source})")
    return {"source": cfg.source, "orders": out, "examples": examples, "plots": [plot]}
