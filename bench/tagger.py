"""The structure tagger (`augment/tags.py`) on real files of each kind, cut into rows like a corpus.

    PYTHONPATH=$PWD python3 bench/tagger.py [--files 40] [--row-len 129] [--vocab 512] [--cache DIR] [--show 3]

Gathers real files from this machine, fetching the missing kinds with the machine's package tools (nothing is
shipped in the repository):
- latex: TeX Live's LaTeX base (`apt-get download texlive-latex-base`, unpacked with `dpkg-deb -x`): .sty, .cls,
  .ltx and .tex files under tex/latex (macro code and documents); where apt is missing, .tex/.sty files that
  python packages ship (docutils, ...);
- troff: man pages under /usr/share/man/man{1,5,7,8} (gzipped troff; `.so` redirects, pages under 2 KB and the
  Google Cloud SDK's generated `gcloud*` pages skipped);
  where there are none, `apt-get download manpages`;
- code: Python standard library modules (/usr/lib/python3*/*.py) and C headers (/usr/include/*.h);
- xml: XML files under /usr/share (DocBook catalogs, GSettings schemas, gdb syscalls, ...; not the MIME database's
  one-type files), DocBook's XSL stylesheets (`apt-get download docbook-xsl`), Adwaita's SVG icons
  (`apt-get download adwaita-icon-theme`), SVG, HTML and XML files in python packages;
- prose: licence texts (/usr/share/common-licenses, LICENSE files of python packages; duplicates dropped) and
  Debian README files.

Each kind's files are sorted by path and split in two by a hash of the path: the `tuning` half (the rules were
chosen on it) and the `held-out` half. Up to --files files of each kind per half. The texts are the corpus's
documents: a byte-level BPE (`curate.default_corpus.train_tokenizer`, --vocab tokens) is trained on a seeded
sample, the documents are shuffled (seeded) and packed into rows of --row-len tokens, and each row's class is
the kind of its main document (`curate.tokenize.main_document`), as in `curate corpus ingest`. The rows are
tagged with `tag_rows`; the bench prints, per half, per-class accuracy and the confusion matrix, and the same for two
document-level labels: each row given its main document's vote over the document's rows (`vote_by_document`, what
`curate explain` uses where the sidecar has `doc_id`), and the tag of the main document's first --doc-chars characters.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("latex", "troff", "code", "xml", "prose")
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "curate-bench-tagger"
MIN_CHARS = 2000
MAX_CHARS = 40_000  # the first characters of a long file (keeps one file from filling a kind)


def _site_packages() -> list[Path]:
    import site
    import sysconfig

    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    return sorted(Path(r) for r in roots if Path(r).is_dir())


def _apt_unpack(package: str, cache: Path) -> Path | None:
    """`apt-get download PACKAGE` into the cache and unpack it; None when apt or dpkg-deb is missing or fails."""
    dest = cache / package
    if (dest / ".done").is_file():
        return dest
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return None
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", package], cwd=cache, check=True, capture_output=True, timeout=300)
        deb = sorted(cache.glob(f"{package}_*.deb"))[-1]
        dest.mkdir(exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, IndexError, OSError) as e:
        print(f"note: apt-get download {package} failed ({type(e).__name__})", file=sys.stderr)
        return None
    (dest / ".done").write_text("ok\n")
    return dest


def _read(path: Path) -> str | None:
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError):
        return None
    if b"\0" in raw[:4096]:
        return None
    text = raw.decode("utf-8", "replace")[:MAX_CHARS]
    return text if len(text) >= MIN_CHARS else None


def latex_files(cache: Path) -> list[Path]:
    root = _apt_unpack("texlive-latex-base", cache)
    if root is not None:
        found = [p for ext in ("sty", "cls", "ltx", "tex") for p in root.glob(f"usr/share/texlive/texmf-dist/tex/latex/**/*.{ext}")]
        if found:
            return found
    return [p for sp in _site_packages() for ext in ("tex", "sty", "cls") for p in sp.glob(f"**/*.{ext}")]


def troff_files(cache: Path) -> list[Path]:
    # the Google Cloud SDK's thousands of generated pages (one template) would fill a sample: left out
    found = [Path(p) for s in "1578" for p in glob.glob(f"/usr/share/man/man{s}/*.gz") if not Path(p).name.startswith("gcloud")]
    if len(found) < 20:
        root = _apt_unpack("manpages", cache)
        if root is not None:
            found += list(root.glob("usr/share/man/man*/*.gz"))
    return found


def code_files(cache: Path) -> list[Path]:
    py = [Path(p) for p in glob.glob("/usr/lib/python3*/*.py")]
    if not py:
        import sysconfig

        py = list(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return py + [Path(p) for p in glob.glob("/usr/include/*.h")]


# XML packages added after the xml rules were last changed (session 6): their files had never been seen when the rules
# were chosen, so `--by-source` reports them apart as the fresh test
FRESH_XML = (("gnome-user-docs", "usr/share/help/C/**/*.page"), ("yelp-xsl", "usr/share/yelp-xsl/**/*.xsl"))


def xml_files(cache: Path) -> list[Path]:
    # freedesktop's thousands of one-type MIME files (/usr/share/mime) would fill a sample: left out
    found = [Path(p) for p in glob.glob("/usr/share/**/*.xml", recursive=True) if not p.startswith("/usr/share/mime/")]
    docbook = _apt_unpack("docbook-xsl", cache)  # DocBook's XSL stylesheets (XML)
    if docbook is not None:
        found += list(docbook.glob("usr/share/xml/docbook/stylesheet/**/*.xsl"))
    icons = _apt_unpack("adwaita-icon-theme", cache)  # SVG icons: markup around path data
    if icons is not None:
        found += list(icons.glob("usr/share/icons/Adwaita/scalable/**/*.svg"))
    for package, pattern in FRESH_XML:
        root = _apt_unpack(package, cache)
        if root is not None:
            found += list(root.glob(pattern))
    for sp in _site_packages():
        found += [p for ext in ("svg", "html", "xml") for p in sp.glob(f"**/*.{ext}")]
    return found


def prose_files(cache: Path) -> list[Path]:
    found = [Path(p) for p in glob.glob("/usr/share/common-licenses/*")]
    for sp in _site_packages():
        found += [p for p in sp.glob("*.dist-info/LICEN[CS]E*") if p.is_file()]
        found += [p for p in sp.glob("*.dist-info/licenses/LICEN[CS]E*") if p.is_file()]
    found += [Path(p) for p in glob.glob("/usr/share/doc/*/README.Debian*")]
    return found


GATHER = {"latex": latex_files, "troff": troff_files, "code": code_files, "xml": xml_files, "prose": prose_files}


def split_of(path: Path) -> str:
    return "held-out" if hashlib.sha1(str(path).encode()).digest()[0] % 2 else "tuning"


def gather(cache: Path, per_half: int) -> dict[str, dict[str, list[tuple[Path, str]]]]:
    """half -> kind -> [(path, text)], at most `per_half` files each, duplicates (same text) dropped."""
    out: dict[str, dict[str, list[tuple[Path, str]]]] = {"tuning": defaultdict(list), "held-out": defaultdict(list)}
    seen: set[str] = set()
    for kind in KINDS:
        paths = sorted({p.resolve() for p in GATHER[kind](cache) if p.is_file()})
        # a seeded order, so a kind with thousands of files is sampled across its folders
        random.Random(kind).shuffle(paths)
        for p in paths:
            half = split_of(p)
            if len(out[half][kind]) >= per_half:
                if all(len(out[h][kind]) >= per_half for h in out):
                    break
                continue
            text = _read(p)
            if text is None or text.lstrip().startswith(".so "):
                continue
            digest = hashlib.sha1(text.encode()).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            out[half][kind].append((p, text))
    return out


def rows_of(docs: list[tuple[str, str, str]], tokenizer, row_len: int, seed: int) -> tuple[np.ndarray, list[str], np.ndarray, list[tuple[str, str, str]]]:
    """Documents (kind, text, source) shuffled and packed into rows: (rows, each row's main-document kind, each
    row's main-document index, the documents in that index)."""
    from curate.tokenize import main_document, pack_rows

    order = np.random.default_rng(seed).permutation(len(docs))
    docs = [docs[i] for i in order]
    ids = tokenizer.encode_batch([t for _, t, _ in docs])
    rows, owners = pack_rows(ids, row_len, tokenizer.eot_id)
    main = main_document(owners)
    return rows, [docs[i][0] for i in main], main, docs


def source_of(path: Path, cache: Path) -> str:
    """The package a fetched file came from, or `machine` for a file this machine already had."""
    try:
        return Path(path).relative_to(cache).parts[0]
    except ValueError:
        return "machine"


def report_by_source(name: str, truth: list[str], tags: list[str], sources: list[str]) -> None:
    """Accuracy of each (kind, source) for the kinds gathered from more than one source."""
    print(f"\n== {name}, by source")
    for k in KINDS:
        kinds_sources = sorted({s for t, s in zip(truth, sources) if t == k})
        if len(kinds_sources) < 2:
            continue
        for src in kinds_sources:
            hits = [a == b for a, b, s in zip(truth, tags, sources) if a == k and s == src]
            print(f"{k:>14} {src:<22} {len(hits):6d} rows {np.mean(hits):7.1%}")


def report(name: str, truth: list[str], tags: list[str], labels: list[str]) -> dict[str, float]:
    print(f"\n== {name}: {len(truth):,} rows")
    conf = Counter(zip(truth, tags))
    cols = sorted({t for t in tags} | set(KINDS), key=lambda c: (c not in labels, labels.index(c) if c in labels else 0, c))
    print(f"{'true/tagged':>14} " + " ".join(f"{c:>7}" for c in cols) + f" {'rows':>7} {'accuracy':>9}")
    acc = {}
    for k in KINDS:
        n = sum(1 for t in truth if t == k)
        if not n:
            continue
        acc[k] = conf[(k, k)] / n
        print(f"{k:>14} " + " ".join(f"{conf[(k, c)]:7d}" for c in cols) + f" {n:7d} {acc[k]:9.1%}")
    print(f"{'all':>14} overall accuracy {np.mean([a == b for a, b in zip(truth, tags)]):.1%}; lowest class "
          f"{min(acc, key=acc.get)} {min(acc.values()):.1%}")
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=40, help="files of each kind in each half (at most)")
    ap.add_argument("--row-len", type=int, default=129, help="tokens per row (129: the real-text setting of issue 15)")
    ap.add_argument("--vocab", type=int, default=512, help="BPE vocabulary")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where fetched packages are unpacked")
    ap.add_argument("--show", type=int, default=0, help="print this many mistagged rows per (true, tagged) pair")
    ap.add_argument("--list", action="store_true", help="print the files used")
    ap.add_argument("--doc-chars", type=int, default=20_000, help="characters of a document tagged as a whole")
    args = ap.parse_args()

    from curate.augment.tags import DOCUMENT_FORMAT_SHARE, DOCUMENT_FORMAT_SHARES, LABELS, tag_text, vote_by_document
    from curate.augment.tags import main_segment
    from curate.default_corpus import train_tokenizer

    t0 = time.perf_counter()
    halves = gather(args.cache, args.files)
    for half, kinds in halves.items():
        sizes = ", ".join(f"{k} {len(kinds[k])} files / {sum(len(t) for _, t in kinds[k]) / 1e6:.2f}M chars" for k in KINDS)
        print(f"{half}: {sizes}")
        if args.list:
            for k in KINDS:
                for p, _ in kinds[k]:
                    print(f"  {half} {k} {p}")
    all_docs = [(k, t) for kinds in halves.values() for k in KINDS for _, t in kinds[k]]
    rng = random.Random(args.seed)
    sample = [t for _, t in rng.sample(all_docs, min(len(all_docs), 400))]
    tokenizer = train_tokenizer(sample, args.vocab)
    print(f"gathered and BPE-{args.vocab} trained in {time.perf_counter() - t0:.1f} s")
    labels = list(LABELS)
    for half in ("tuning", "held-out"):
        docs = [(k, t, source_of(p, args.cache)) for k in KINDS for p, t in halves[half][k]]
        rows, truth, main, shuffled = rows_of(docs, tokenizer, args.row_len, args.seed)
        doc_texts = [t for _, t, _ in shuffled]
        sources = [shuffled[d][2] for d in main.tolist()]
        t = time.perf_counter()
        texts = [tokenizer.decode(main_segment(r, tokenizer.eot_id)) for r in rows]
        tags = [tag_text(x) for x in texts]
        dt = time.perf_counter() - t
        report(f"{half} ({args.row_len}-token rows, tagged at {len(rows) / dt:,.0f} rows/s)", truth, tags, labels)
        voted = vote_by_document(tags, main.tolist())
        report(f"{half}, each row given its main document's vote (`vote_by_document`: a format class with >= "
               f"{DOCUMENT_FORMAT_SHARE:.0%} of the rows, xml {DOCUMENT_FORMAT_SHARES['xml']:.0%}, else the majority)", truth, voted, labels)
        report_by_source(f"{half}, per row", truth, tags, sources)
        report_by_source(f"{half}, voted per document", truth, voted, sources)
        t = time.perf_counter()
        whole = {d: tag_text(doc_texts[d][: args.doc_chars]) for d in sorted(set(main.tolist()))}
        dt = time.perf_counter() - t
        report(f"{half}, each row given the tag of its main document's first {args.doc_chars:,} characters "
               f"({len(whole)} documents at {len(whole) / dt:,.0f} documents/s)", truth, [whole[d] for d in main.tolist()], labels)
        if args.show:
            shown: Counter = Counter()
            for x, a, b in zip(texts, truth, tags):
                if a != b and shown[(a, b)] < args.show:
                    shown[(a, b)] += 1
                    print(f"--- {a} tagged {b}:\n{x[:400]!r}")


if __name__ == "__main__":
    main()
