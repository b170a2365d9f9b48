import gzip
import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from plasticlm.data.corpus import SkipLog, read_corpus
from plasticlm.data.linked import LinkedGraph
from plasticlm.data.offline import (
    BuildConfig,
    build_offline,
    catalog_pairs,
    clean_page,
    is_english,
    list_pages,
    parse_mo,
    render_all,
    resolve_refs,
)

needs_groff = pytest.mark.skipif(not (shutil.which("groff") and shutil.which("col")), reason="needs groff and col")


def write_mo(path: Path, entries: list[tuple[bytes, bytes]], order="<") -> None:
    """A compiled gettext catalog (the format msgfmt writes)."""
    n = len(entries)
    orig_off, trans_off = 28, 28 + 8 * n
    data_off = trans_off + 8 * n
    blob, otab, ttab = b"", [], []
    for mid, _ in entries:
        otab.append((len(mid), data_off + len(blob)))
        blob += mid + b"\x00"
    for _, mstr in entries:
        ttab.append((len(mstr), data_off + len(blob)))
        blob += mstr + b"\x00"
    head = struct.pack(order + "7I", 0x950412DE, 0, n, orig_off, trans_off, 0, 0)
    path.write_bytes(head + b"".join(struct.pack(order + "2I", *x) for x in otab + ttab) + blob)


ENTRIES = [
    (b"", b"Content-Type: text/plain; charset=ISO-8859-1\n"),
    (b"Remove the selected file from the list", "Die ausgewählte Datei aus der Liste entfernen".encode("latin-1")),
    (b"one file was removed from the list\x00%d files were removed from the list",
     "eine Datei wurde aus der Liste entfernt\x00%d Dateien wurden entfernt".encode("latin-1")),
    (b"menu\x04Open the file in a new window", "Öffne die Datei in einem neuen Fenster".encode("latin-1")),
    (b"Too short", b"Zu kurz"),
    (b"%s: %d of %d (%s)", b"%s: %d von %d (%s)"),
    (b"Print the version of this program and exit", b"Print the version of this program and exit"),
]


@pytest.mark.parametrize("order", ["<", ">"], ids=["little-endian", "big-endian"])
def test_parse_mo_charset_plural_context(tmp_path, order):
    write_mo(tmp_path / "x.mo", ENTRIES, order)
    pairs = dict(parse_mo(tmp_path / "x.mo"))
    assert pairs["Remove the selected file from the list"] == "Die ausgewählte Datei aus der Liste entfernen"
    assert pairs["one file was removed from the list"] == "eine Datei wurde aus der Liste entfernt"
    assert pairs["Open the file in a new window"] == "Öffne die Datei in einem neuen Fenster"
    (tmp_path / "bad.mo").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="bad.mo: not a gettext .mo file"):
        parse_mo(tmp_path / "bad.mo")


def test_catalog_pairs_filter_and_count(tmp_path):
    write_mo(tmp_path / "app.mo", ENTRIES)
    (tmp_path / "broken.mo").write_bytes(b"garbage")
    skips = SkipLog()
    pairs = catalog_pairs(tmp_path, min_words=5, skips=skips)
    assert [p["en"] for p in pairs] == ["Remove the selected file from the list", "one file was removed from the list",
                                        "Open the file in a new window"]
    assert skips.counts["unreadable gettext catalog"] == 1 and "broken.mo" in skips.examples["unreadable gettext catalog"][0]


def test_is_english():
    assert is_english("This option sets the size of the buffer that is used for reading.")
    assert not is_english("Diese Option setzt die Größe des Puffers, der für das Lesen verwendet wird.")
    assert not is_english("-v, --verbose")


def test_clean_page_paragraphs_and_see_also():
    rendered = ("FOO(1)            General Commands            FOO(1)\n\n"
                "NAME\n       foo - frobnicate\n\nDESCRIPTION\n       The  foo program frobnicates\n"
                "       things.\n\nSEE ALSO\n       bar(1), baz (3), qux(3posix)\n\n"
                "1.0                  2024                  FOO(1)\n")
    paras, refs = clean_page(rendered)
    assert paras == ["NAME", "foo - frobnicate", "DESCRIPTION", "The foo program frobnicates things.", "SEE ALSO",
                     "bar(1), baz (3), qux(3posix)"]
    assert refs == [("bar", "1"), ("baz", "3"), ("qux", "3posix")]


PAGE = """.TH {name} {sec} 2024 test
.SH NAME
{name} \\- {what}
.SH DESCRIPTION
The {name} program is used to {what}. It reads the input and writes the output, and this is all it does.
.PP
A second paragraph of {name} explains the options in more words than the first one does.
.SH SEE ALSO
{refs}
"""


def man_tree(root: Path) -> None:
    def page(sec, name, refs, what="do things", gz=True):
        d = root / f"man{sec}"
        d.mkdir(parents=True, exist_ok=True)
        src = PAGE.format(name=name, sec=sec, what=what, refs=refs).encode()
        if gz:
            (d / f"{name}.{sec}.gz").write_bytes(gzip.compress(src))
        else:
            (d / f"{name}.{sec}").write_bytes(src)
    page(1, "foo", ".BR bar (1),\n.BR alias (1),\n.BR nothere (8),\n.BR Baz (3)")
    page(1, "bar", ".BR foo (1)", gz=False)
    page(3, "baz", ".BR baz (3)")
    os.symlink("foo.1.gz", root / "man1" / "alias.1.gz")
    (root / "man3" / "stub.3").write_text(".so man1/bar.1\n")
    page(1, "gcloud_thing", ".BR foo (1)")


@needs_groff
def test_list_pages_aliases_and_resolution(tmp_path):
    man_tree(tmp_path)
    pages, aliases = list_pages(tmp_path)
    assert set(pages) == {"foo(1)", "bar(1)", "baz(3)"}  # gcloud_* left out
    assert aliases == {"alias(1)": "foo(1)", "stub(3)": "bar(1)"}
    cites, missing = resolve_refs([("bar", "1"), ("alias", "1"), ("nothere", "8"), ("Baz", "3"), ("stub", "3")],
                                  pages, aliases)
    assert cites == ["bar(1)", "foo(1)", "baz(3)"] and missing == 1


PAGE_DE = """.TH foo 1 2024 test
.SH BEZEICHNUNG
foo \\- macht Dinge
.SH BESCHREIBUNG
Das Programm foo wird verwendet, um Dinge zu tun. Es liest die Eingabe und schreibt die Ausgabe, und das ist alles.
.PP
Ein zweiter Absatz von foo erklärt die Optionen mit mehr Wörtern, als es der erste Absatz tut.
.SH "SIEHE AUCH"
.BR bar (1)
.SH ÜBERSETZUNG
Die deutsche Übersetzung dieser Handbuchseite wurde von einem Menschen erstellt und ist frei.
"""


def _render_in_worker(pages):
    return render_all(pages, 2, "render", False, SkipLog())


@needs_groff
def test_pages_render_inside_a_daemonic_pool_worker(tmp_path):
    """`plasticlm experiment length --jobs 2` builds its corpus in a pool worker, which may not
    start a pool of its own: it renders in its own process, with the same result."""
    import multiprocessing

    man_tree(tmp_path / "man")
    pages = {p.name: p for p in (tmp_path / "man" / "man1").glob("*.1*") if not p.is_symlink()}
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply(_render_in_worker, (pages,))
    assert got and got == render_all(pages, 1, "render", False, SkipLog())


@needs_groff
def test_build_offline_small_tree(tmp_path):
    man_tree(tmp_path / "man")
    de = tmp_path / "de"
    man_tree(de)  # English pages in the German tree: untranslated, dropped
    (de / "man1" / "foo.1.gz").write_bytes(gzip.compress(PAGE_DE.encode()))
    write_mo((tmp_path / "loc").mkdir() or tmp_path / "loc" / "app.mo", ENTRIES)
    cfg = BuildConfig(man_root=str(tmp_path / "man"), de_root=str(de), locale_dir=str(tmp_path / "loc"),
                      vocab_size=400, min_tokens=50, workers=1)
    r = build_offline(tmp_path / "out", cfg, progress=False)
    graph = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "out" / "graph.jsonl").read_text().splitlines()}
    assert graph["foo(1)"]["cites"] == ["bar(1)", "baz(3)"]  # alias(1) is foo itself; nothere(8) unresolved
    assert graph["baz(3)"]["cites"] == []  # a self-reference is no citation
    assert r["see_also"] == {"references": 6, "unresolved": 1}
    for name in ("en", "graph"):
        assert r["corpora"][name]["documents"] == 3 and r["corpora"][name]["tokens"] > 50
        assert r["corpora"][name]["bytes"] == sum(len(n["text"].encode()) for n in graph.values())
    # Only foo(1) is German; the English paragraphs of the other pages are dropped and counted.
    german = [json.loads(x) for x in (tmp_path / "out" / "de.jsonl").read_text().splitlines()]
    assert [d["id"] for d in german] == ["foo(1)"] and "Übersetzung" not in german[0]["text"]
    assert r["skipped"]["English paragraph in a German page (dropped)"]["count"] > 0
    assert r["pairs_by_source"] == {"gettext": 3, "man": 2}  # foo(1)'s two description paragraphs
    pairs = [json.loads(x) for x in (tmp_path / "out" / "en-de.jsonl").read_text().splitlines()]
    assert pairs[-1]["en"].startswith("A second paragraph of foo") and pairs[-1]["de"].startswith("Ein zweiter")
    assert "| en | 3 |" in (tmp_path / "out" / "report.md").read_text()
    assert r["linked"]["pages"] == 3 and r["linked"]["citations"] == 3


@needs_groff
@pytest.mark.skipif(not Path("/usr/share/man/man1").is_dir(), reason="no man pages on this machine")
def test_build_offline_from_this_machines_man_pages(tmp_path):
    """A quick build on the real pages (first 12 of each language) feeds the readers and the graph."""
    cfg = BuildConfig(max_pages=12, vocab_size=500, min_tokens=1000, locale_dir=str(tmp_path / "none"))
    r = build_offline(tmp_path / "out", cfg, progress=False)
    assert r["corpora"]["en"]["documents"] >= 10 and r["corpora"]["en"]["tokens"] > 10_000
    skips = SkipLog()
    docs = list(read_corpus(tmp_path / "out" / "graph.jsonl", skips=skips))
    assert skips.total == 0 and len(docs) == r["corpora"]["graph"]["documents"]
    assert all(d.text.startswith("NAME") for d in docs)
    from plasticlm.tokenizer import BPETokenizer

    g = LinkedGraph.from_documents(docs, BPETokenizer.load(tmp_path / "out" / "tokenizer.json"))
    assert g.n_dangling == 0  # the builder writes resolved citations only
