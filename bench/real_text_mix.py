"""A public real-text mix for the formation study: a seeded sample of text files this machine already has.

Every file comes from the operating system or the Python installation (no download): Debian/Ubuntu man
pages, Python source of the standard library, XML/SVG/HTML files shipped by packages, prose (package
copyright files, reStructuredText/Markdown/plain-text docs) and LaTeX (.tex/.sty/.cls/.bib/.dtx, few on a
machine without TeX Live: `apt-get install texlive-latex-base` or any pip package that ships them adds
more; each root below is searched). Each domain gets the same character budget; files are read (man pages
decompressed), taken in a seeded random order, each cut to at most `--file-chars` characters (so one huge
file cannot fill a domain), until the budget is met, and written as UTF-8 to DIR/<domain>/NNNNN.txt, ready
for `curate corpus ingest DIR --vocab N` (the subfolder becomes each row's `domain` label).

The sample is a pure function of (the files present, --chars, --file-chars, --seed): the same machine image
gives the same folder; the printed digest identifies it.

Run: python bench/real_text_mix.py --out DIR [--chars 3000000] [--seed 0] [--file-chars 20000]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import random
import shutil
import sys
import sysconfig
from pathlib import Path

MAN_ROOT = Path("/usr/share/man")
SHARE_ROOTS = [Path("/usr/share"), Path("/usr/lib/python3")]
MIN_FILE_CHARS = 200


def python_roots() -> list[Path]:
    """The standard library and the installation's site-packages (both searched for every domain but man)."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths["stdlib"]), Path(paths["purelib"])})


def _walk(roots: list[Path], suffixes: tuple[str, ...], skip_parts: tuple[str, ...] = ()) -> list[Path]:
    found: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for p in root.rglob("*"):
            if p.suffix.lower() in suffixes and p.is_file() and not p.is_symlink():
                if not any(part in skip_parts for part in p.parts):
                    found.add(p)
    return sorted(found)


def domain_files() -> dict[str, list[Path]]:
    """Candidate files per domain, sorted (the seed decides the order in which they are taken)."""
    py = python_roots()
    man = sorted(
        p for sec in range(1, 9) for p in (MAN_ROOT / f"man{sec}").glob("*.gz") if p.is_file() and not p.is_symlink()
    )
    prose = sorted(
        set(_walk(py + SHARE_ROOTS, (".rst", ".md", ".txt"), ("test", "tests")))
        | {p for p in Path("/usr/share/doc").glob("*/copyright") if p.is_file() and not p.is_symlink()}
    )
    return {
        "python": _walk(py, (".py",), ("test", "tests")),
        "man": man,
        "markup": _walk(py + SHARE_ROOTS, (".xml", ".svg", ".html", ".htm", ".xsl", ".xsd", ".dtd")),
        "prose": prose,
        "latex": _walk(py + SHARE_ROOTS, (".tex", ".sty", ".cls", ".bib", ".dtx", ".ins")),
    }


def read_text(path: Path) -> str | None:
    """A file's text (gzip decompressed), or None if it is binary or not UTF-8."""
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.lstrip("\ufeff")


def sample_domain(files: list[Path], budget: int, file_chars: int, rng: random.Random) -> list[tuple[Path, str]]:
    order = list(files)
    rng.shuffle(order)
    taken: list[tuple[Path, str]] = []
    total = 0
    for p in order:
        if total >= budget:
            break
        text = read_text(p)
        if text is None or len(text) < MIN_FILE_CHARS:
            continue
        text = text[: min(file_chars, budget - total)]
        taken.append((p, text))
        total += len(text)
    return taken


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="output folder (must not exist, or be empty)")
    ap.add_argument("--chars", type=int, default=3_000_000, help="total characters, split evenly over the domains")
    ap.add_argument("--file-chars", type=int, default=20_000, help="at most this many characters from one file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.chars <= 0 or args.file_chars < MIN_FILE_CHARS:
        print(f"error: --chars must be positive and --file-chars at least {MIN_FILE_CHARS}", file=sys.stderr)
        return 2
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} exists and is not empty", file=sys.stderr)
        return 2
    candidates = {d: fs for d, fs in domain_files().items() if fs}
    budget = args.chars // len(candidates)
    tmp = args.out.with_name(args.out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    digest = hashlib.sha256()
    print(f"{'domain':8} {'candidates':>10} {'files':>6} {'chars':>10}")
    total_files = total_chars = 0
    for i, (domain, files) in enumerate(sorted(candidates.items())):
        rng = random.Random(f"{args.seed}:{domain}")
        taken = sample_domain(files, budget, args.file_chars, rng)
        (tmp / domain).mkdir(parents=True)
        for k, (src, text) in enumerate(taken):
            (tmp / domain / f"{k:05d}.txt").write_text(text, encoding="utf-8")
            digest.update(f"{domain}/{src}\0".encode() + text.encode("utf-8"))
        chars = sum(len(t) for _, t in taken)
        total_files += len(taken)
        total_chars += chars
        print(f"{domain:8} {len(files):>10} {len(taken):>6} {chars:>10,}")
    print(f"{'total':8} {'':>10} {total_files:>6} {total_chars:>10,}")
    if args.out.exists():
        args.out.rmdir()
    tmp.rename(args.out)
    print(f"wrote {args.out} (sample digest {digest.hexdigest()[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
