"""The offline corpus builder: real text installed on a Debian machine -> four corpora.

``plasticlm build-corpus OUT`` (sizes measured in ``benchmarks/results/*_offline_corpus.md``) writes

    en.jsonl      English: man pages, sections 1-8, without the near-duplicate ``gcloud_*`` pages
    de.jsonl      German: the German man pages (package manpages-de), English paragraphs and the
                  translators' credits (the closing ÜBERSETZUNG section) dropped
    en-de.jsonl   English-German pairs {id, en, de, source}: gettext catalogs of the German
                  locale, and paragraph pairs of man pages that exist in both languages
    graph.jsonl   linked articles {id, text, cites}: English pages citing the pages named in
                  their SEE ALSO sections
    tokenizer.json, report.json, report.md

and reports the size of each in documents, words, tokens and bytes, and the graph's walks.

Man pages are rendered with groff (no hyphenation, 80 columns) and cleaned into paragraphs.
A page is ``name(section)``; symlinks and ``.so`` stubs are aliases of their target, so a SEE
ALSO reference to an alias reaches the real page. References resolve by exact name and section,
then case-insensitively within the section's number.

With ``install=True`` the builder first installs the Debian packages it reads
(``apt-get install manpages-de manpages-de-dev``; root only). Pages that fail to render, catalogs
that fail to parse and paragraphs left in English are counted skips in the report.
"""
from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

from tqdm import tqdm

from .corpus import SkipLog

log = logging.getLogger("plasticlm.data")

DEBIAN_PACKAGES = ["manpages-de", "manpages-de-dev"]
GROFF = ["groff", "-k", "-t", "-e", "-Tutf8", "-man", "-rHY=0", "-rLL=80n"]
_PAGE_FILE = re.compile(r"^(?P<name>.+)\.(?P<section>[1-9][a-z0-9]*)(?:\.gz)?$")
_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_.:+-]*)\s?\(([1-9][a-z0-9]*)\)")
SEE_ALSO = {"SEE ALSO", "SIEHE AUCH"}
TRANSLATION_CREDITS = "ÜBERSETZUNG"

# Short function words: a paragraph with more English than German ones is English.
_EN_WORDS = set("the and is of to a in for with this that be are or by on not it if as from an".split())
_DE_WORDS = set("der die das und ist nicht mit von den für ein eine zu auf wird werden sie oder des im dem "
                "bei eines einer wenn auch sich kann".split())


@dataclass
class BuildConfig:
    man_root: str = "/usr/share/man"
    """English man pages (man1 ... man8 below it)."""
    de_root: str = "/usr/share/man/de"
    """German man pages."""
    locale_dir: str = "/usr/share/locale/de/LC_MESSAGES"
    """gettext catalogs (*.mo) of the German locale."""
    sections: str = "12345678"
    exclude_prefix: tuple[str, ...] = ("gcloud_",)
    """Pages whose file name starts with one of these are left out (heavily duplicated)."""
    max_pages: int = 0
    """Read at most this many pages per language (0: all); for quick builds and tests."""
    min_pair_words: int = 5
    """English side of a pair needs at least this many words of two or more letters."""
    min_paragraphs: int = 2
    """A page with fewer paragraphs (after cleaning) is skipped."""
    vocab_size: int = 32768
    """BPE vocabulary trained on English + German to count tokens (tokenizer.json)."""
    min_tokens: int = 65536
    """Walk length the graph report counts sequences for (the linked stream's default)."""
    workers: int = 0
    """Rendering processes (0: one per core)."""


# ---- man pages ---------------------------------------------------------------------------------
def _read_source(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def page_id(path: Path) -> str | None:
    m = _PAGE_FILE.match(path.name)
    return f"{m['name']}({m['section']})" if m else None


def list_pages(root: str | Path, sections: str = "12345678", exclude_prefix=("gcloud_",),
               skips: SkipLog | None = None) -> tuple[dict[str, Path], dict[str, str]]:
    """``(pages, aliases)``: page id -> source file, and alias id -> page id (symlinks, ``.so``)."""
    root = Path(root)
    skips = skips if skips is not None else SkipLog()
    pages, links = {}, {}
    for s in sections:
        d = root / f"man{s}"
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.name.startswith(tuple(exclude_prefix)) or not f.is_file():
                continue
            pid = page_id(f)
            if pid is None:
                skips.skip("file name is not name.section[.gz]", str(f))
                continue
            if f.is_symlink():
                links[pid] = f.resolve()
                continue
            try:
                head = _read_source(f)[:300].lstrip()
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                skips.skip("unreadable man page source", f"{f} ({e})")
                continue
            m = re.match(rb"\.so\s+(\S+)", head)
            if m and head.count(b"\n") <= 1:
                links[pid] = (root / m[1].decode(errors="replace")).resolve()
                continue
            pages[pid] = f
    by_file = {p.resolve(): pid for pid, p in pages.items()}
    aliases = {}
    for alias, target in links.items():
        t = by_file.get(target) or by_file.get(target.with_name(target.name + ".gz"))
        if t is not None and alias not in pages:
            aliases[alias] = t
    return pages, aliases


def render_page(path: str | Path, timeout: float = 60) -> str:
    """Plain UTF-8 text of a man page, as groff lays it out at 80 columns."""
    src = _read_source(Path(path))
    out = subprocess.run(GROFF, input=src, capture_output=True, timeout=timeout, env={**os.environ, "LC_ALL": "C.UTF-8"})
    text = subprocess.run(["col", "-bx"], input=out.stdout, capture_output=True, timeout=timeout).stdout
    return text.decode("utf-8", errors="replace")


def is_heading(line: str) -> bool:
    return bool(line) and not line[0].isspace() and line.strip() == line.strip().upper() and any(c.isalpha() for c in line)


def clean_page(rendered: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Paragraphs (whitespace collapsed, header and footer lines dropped) and SEE ALSO references."""
    lines = rendered.splitlines()
    body = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(body) < 3:
        return [], []
    lines = lines[body[0] + 1: body[-1]]  # the first and last lines repeat the title and date
    paragraphs, refs, buf, section = [], [], [], ""
    for ln in lines + [""]:
        if is_heading(ln):
            if buf:
                paragraphs.append(" ".join(" ".join(buf).split()))
                buf = []
            section = " ".join(ln.split())
            paragraphs.append(section)
        elif ln.strip():
            buf.append(ln)
            if section in SEE_ALSO:
                refs += _REF.findall(ln)
        elif buf:
            paragraphs.append(" ".join(" ".join(buf).split()))
            buf = []
    return paragraphs, refs


def _render_clean(path: str) -> tuple[list[str], list[tuple[str, str]], str]:
    try:
        return (*clean_page(render_page(path)), "")
    except (subprocess.SubprocessError, OSError, EOFError, ValueError) as e:
        return [], [], f"{type(e).__name__}: {e}"


def is_english(paragraph: str) -> bool:
    words = re.findall(r"[a-zäöüß]+", paragraph.lower())
    en = sum(w in _EN_WORDS for w in words)
    de = sum(w in _DE_WORDS for w in words)
    return en > de and en >= 2


def german_words(text: str) -> int:
    """German function words in ``text``: a page of headings and option names has next to none."""
    return sum(w in _DE_WORDS for w in re.findall(r"[a-zäöüß]+", text.lower()))


def n_words(text: str) -> int:
    """Words of two or more letters (format strings such as "%s %d" count none)."""
    return len(re.findall(r"[^\W\d_]{2,}", text))


def resolve_refs(refs, pages: dict[str, Path], aliases: dict[str, str]) -> tuple[list[str], int]:
    """Page ids named by ``refs`` [(name, section)], and how many named no page here."""
    lower: dict[tuple[str, str], str] = {}
    for pid in list(pages) + list(aliases):
        name, sec = pid[:-1].rsplit("(", 1)
        lower.setdefault((name.lower(), sec[0]), aliases.get(pid, pid))
    out, missing = [], 0
    for name, sec in refs:
        rid = f"{name}({sec})"
        target = rid if rid in pages else aliases.get(rid) or lower.get((name.lower(), sec[0]))
        if target is None:
            missing += 1
        else:
            out.append(target)
    return list(dict.fromkeys(out)), missing


def render_all(pages: dict[str, Path], workers: int, desc: str, progress: bool, skips: SkipLog):
    ids = list(pages)
    results = {}
    paths = [str(pages[i]) for i in ids]
    # A daemonic process (a worker of `plasticlm experiment --jobs N`) may not start a pool: render here.
    pool = None if multiprocessing.current_process().daemon else Pool(workers or os.cpu_count() or 1)
    try:
        it = pool.imap(_render_clean, paths, chunksize=8) if pool else map(_render_clean, paths)
        for pid, (paras, refs, err) in tqdm(zip(ids, it), total=len(ids), desc=desc, unit="page",
                                            disable=not progress, dynamic_ncols=True):
            if err:
                skips.skip("page failed to render", f"{pages[pid]} ({err})")
            else:
                results[pid] = (paras, refs)
    finally:
        if pool is not None:
            pool.terminate()
    return results


# ---- gettext catalogs ----------------------------------------------------------------------------
def parse_mo(path: str | Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a compiled gettext catalog, singular forms, decoded with the
    catalog's declared charset. ValueError naming the file when it is not a catalog."""
    path = Path(path)
    data = path.read_bytes()
    if len(data) < 28:
        raise ValueError(f"{path}: too short for a gettext catalog")
    magic = int.from_bytes(data[:4], "little")
    order = "little" if magic == 0x950412DE else "big" if int.from_bytes(data[:4], "big") == 0x950412DE else None
    if order is None:
        raise ValueError(f"{path}: not a gettext .mo file (magic {data[:4].hex()})")

    def u32(off: int) -> int:
        return int.from_bytes(data[off:off + 4], order)

    n, orig, trans = u32(8), u32(12), u32(16)
    raw = []
    for i in range(n):
        ln, off = u32(orig + 8 * i), u32(orig + 8 * i + 4)
        tl, toff = u32(trans + 8 * i), u32(trans + 8 * i + 4)
        if off + ln > len(data) or toff + tl > len(data):
            raise ValueError(f"{path}: entry {i} points past the end of the file")
        raw.append((data[off:off + ln], data[toff:toff + tl]))
    charset = "utf-8"
    for mid, mstr in raw:
        if mid == b"":
            m = re.search(rb"charset=([A-Za-z0-9_.:-]+)", mstr)
            if m:
                charset = m[1].decode("ascii")
    try:
        "".encode(charset)
    except LookupError:
        raise ValueError(f"{path}: unknown charset {charset!r}") from None
    pairs = []
    for mid, mstr in raw:
        if not mid:
            continue
        mid = mid.split(b"\x00")[0].split(b"\x04")[-1]  # singular form, without a msgctxt
        mstr = mstr.split(b"\x00")[0]
        pairs.append((mid.decode(charset, errors="replace"), mstr.decode(charset, errors="replace")))
    return pairs


def catalog_pairs(locale_dir: str | Path, min_words: int, skips: SkipLog) -> list[dict]:
    out, seen = [], set()
    for f in sorted(Path(locale_dir).glob("*.mo")):
        try:
            pairs = parse_mo(f)
        except (ValueError, OSError) as e:
            skips.skip("unreadable gettext catalog", str(e))
            continue
        for i, (en, de) in enumerate(pairs):
            en, de = " ".join(en.split()), " ".join(de.split())
            if n_words(en) < min_words or not de or de == en or is_english(de) or (en, de) in seen:
                continue
            seen.add((en, de))
            out.append({"id": f"{f.stem}.mo:{i}", "en": en, "de": de, "source": "gettext"})
    return out


# ---- packages --------------------------------------------------------------------------------------
def install_packages(packages=DEBIAN_PACKAGES) -> list[str]:
    """apt-get install what is missing; returns the packages still missing (with a warning)."""
    def missing():
        out = []
        for p in packages:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
            if "install ok installed" not in r.stdout:
                out.append(p)
        return out

    if not shutil.which("dpkg-query") or not shutil.which("apt-get"):
        log.warning("no apt-get/dpkg here: cannot install %s", packages)
        return list(packages)
    todo = missing()
    if not todo:
        return []
    if os.geteuid() != 0:
        log.warning("installing %s needs root: run `sudo apt-get install %s`", todo, " ".join(todo))
        return todo
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *todo]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            log.warning("apt-get install %s failed: %s", " ".join(todo), r.stderr.strip()[-500:])
    return missing()


# ---- the build --------------------------------------------------------------------------------------
def _write_jsonl(path: Path, records) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _limit(pages: dict, n: int) -> dict:
    return dict(list(pages.items())[:n]) if n else pages


def build_offline(out_dir: str | Path, cfg: BuildConfig = BuildConfig(), *, install: bool = False,
                  progress: bool = True) -> dict:
    """Build the four corpora under ``out_dir``; returns the report (also report.json / report.md)."""
    from .linked import LinkedGraph
    from ..tokenizer import BPETokenizer

    t0 = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skips = SkipLog()
    missing_pkgs = install_packages() if install else []
    if not shutil.which("groff") or not shutil.which("col"):
        raise FileNotFoundError("the offline builder renders man pages with groff and col: "
                                "apt-get install groff-base bsdextrautils")
    if not Path(cfg.man_root).is_dir():
        raise FileNotFoundError(f"no man pages at {cfg.man_root}: this machine has no English source text")

    # English pages, their paragraphs and references.
    pages, aliases = list_pages(cfg.man_root, cfg.sections, cfg.exclude_prefix, skips)
    pages = _limit(pages, cfg.max_pages)
    en = render_all(pages, cfg.workers, "render en", progress, skips)
    en_docs, graph, n_refs, n_unresolved = [], [], 0, 0
    for pid, (paras, refs) in en.items():
        if len(paras) < cfg.min_paragraphs:
            skips.skip("page with too little text", pid)
            continue
        text = "\n\n".join(paras)
        cites, missing = resolve_refs(refs, pages, aliases)
        cites = [c for c in cites if c != pid]
        n_refs += len(refs)
        n_unresolved += missing
        en_docs.append({"id": pid, "text": text})
        graph.append({"id": pid, "text": text, "cites": cites})
    kept = {d["id"] for d in graph}
    for node in graph:  # a cited page may have been skipped above
        node["cites"] = [c for c in node["cites"] if c in kept]

    # German pages; English paragraphs left untranslated are dropped.
    de_docs, pairs, n_en_paras = [], [], 0
    de_pages = {}
    if Path(cfg.de_root).is_dir():
        de_pages, _ = list_pages(cfg.de_root, cfg.sections, cfg.exclude_prefix, skips)
        de_pages = _limit(de_pages, cfg.max_pages)
    else:
        log.warning("no German man pages at %s (install %s, or pass install=True)", cfg.de_root, DEBIAN_PACKAGES)
    de = render_all(de_pages, cfg.workers, "render de", progress, skips) if de_pages else {}
    for pid, (paras, _) in de.items():
        if TRANSLATION_CREDITS in paras:  # translators' credits close every German page: boilerplate
            paras = paras[:paras.index(TRANSLATION_CREDITS)]
        german = [p for p in paras if not is_english(p)]
        n_en_paras += len(paras) - len(german)
        if len(german) < cfg.min_paragraphs or german_words(" ".join(german)) < 5:
            skips.skip("German page with too little German text", pid)
            continue
        de_docs.append({"id": pid, "text": "\n\n".join(german)})
        # Paragraph pairs: pages in both languages that kept the same paragraph structure.
        if pid in en and len(en[pid][0]) == len(paras):
            for k, (pe, pd) in enumerate(zip(en[pid][0], paras)):
                if n_words(pe) >= cfg.min_pair_words and pe != pd and not is_english(pd):
                    pairs.append({"id": f"{pid}#{k}", "en": pe, "de": pd, "source": "man"})
    if n_en_paras:
        skips.counts["English paragraph in a German page (dropped)"] += n_en_paras
    if Path(cfg.locale_dir).is_dir():
        pairs = catalog_pairs(cfg.locale_dir, cfg.min_pair_words, skips) + pairs
    else:
        log.warning("no gettext catalogs at %s", cfg.locale_dir)

    _write_jsonl(out / "en.jsonl", en_docs)
    _write_jsonl(out / "de.jsonl", de_docs)
    _write_jsonl(out / "en-de.jsonl", pairs)
    _write_jsonl(out / "graph.jsonl", graph)

    # Sizes, with a BPE trained on both languages.
    texts = [d["text"] for d in en_docs + de_docs] + [p[k] for p in pairs for k in ("en", "de")]
    if not texts:
        raise ValueError(f"the builder found no text under {cfg.man_root} ({skips.summary()})")
    tok = BPETokenizer.train(texts, vocab_size=cfg.vocab_size, progress=False)
    tok.save(out / "tokenizer.json")

    def size(records, fields=("text",)):
        strs = [r[f] for r in records for f in fields]
        ids = tok.encode_batch(strs) if strs else []
        return {"documents": len(records), "words": sum(len(s.split()) for s in strs),
                "tokens": sum(len(i) for i in ids), "bytes": sum(len(s.encode()) for s in strs)}, ids

    en_size, en_ids = size(en_docs)
    g = LinkedGraph.build([n["id"] for n in graph], en_ids, [n["cites"] for n in graph])
    report = {
        "date": time.strftime("%Y-%m-%d"), "seconds": round(time.time() - t0, 1), "config": asdict(cfg),
        "corpora": {"en": en_size, "de": size(de_docs)[0], "en-de": size(pairs, ("en", "de"))[0],
                    "graph": {**en_size, "citations": g.n_citations}},
        "pairs_by_source": dict(Counter(p["source"] for p in pairs)),
        "see_also": {"references": n_refs, "unresolved": n_unresolved},
        "linked": g.sequence_report(cfg.min_tokens),
        "missing_packages": missing_pkgs, "skipped": skips.report(),
        "tokenizer": {"vocab_size": tok.vocab_size},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(report_markdown(report))
    return report


def report_markdown(r: dict) -> str:
    rows = ["| corpus | documents | words | tokens | bytes |", "|---|---:|---:|---:|---:|"]
    for name, s in r["corpora"].items():
        rows.append(f"| {name} | {s['documents']:,} | {s['words']:,} | {s['tokens']:,} | {s['bytes']:,} |")
    lk = r["linked"]
    tq, pq = lk["tokens_per_sequence"], lk["pages_per_sequence"]
    lines = [f"# Offline corpus ({r['date']}, {r['seconds']} s)", "",
             f"Tokens counted with a byte-level BPE of {r['tokenizer']['vocab_size']:,} ids trained on these corpora.",
             "", *rows, "",
             f"Pairs by source: {r['pairs_by_source']}. SEE ALSO references: {r['see_also']['references']:,} "
             f"({r['see_also']['unresolved']:,} name no page here).", "",
             f"Linked articles: {lk['pages']:,} pages, {lk['citations']:,} citations, {lk['pages_on_cycles']:,} pages "
             f"on cycles. Walks of at least {lk['min_tokens']:,} tokens: **{lk['sequences']:,} sequences** "
             f"({lk['roots_too_short']:,} roots too short)."]
    if tq:
        lines.append(f"Tokens per sequence p0/p10/p50/p90/p100: {tq['p0']:,} / {tq['p10']:,} / {tq['p50']:,} / "
                     f"{tq['p90']:,} / {tq['p100']:,}; pages per sequence: {pq['p0']} / {pq['p10']} / {pq['p50']} / "
                     f"{pq['p90']} / {pq['p100']}.")
    if r["missing_packages"]:
        lines.append(f"\nMissing Debian packages: {r['missing_packages']}.")
    lines += ["", "Skipped: " + (", ".join(f"{k}: {v['count']:,}" for k, v in r["skipped"].items()) or "nothing"), ""]
    return "\n".join(lines)
