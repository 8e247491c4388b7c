"""Build the pinned real-text corpus of a recipe: Debian packages by name, version and sha256, extraction rules
per domain, and the digest of the result, so any machine that reaches Debian's registry builds the same bytes.

Steps: fetch each `.deb` with `apt-get download NAME=VERSION` into `--cache` (a file already there with the
pinned sha256 is reused; another sha256 is an error naming the package), unpack its data archive (pure Python:
`ar` + `tarfile`), then per domain walk the rules' folders in sorted order, take the files in a seeded random
order, read each as UTF-8 (`.gz` decompressed, binary or non-UTF-8 files skipped), cut each to `file_chars`,
and stop at the domain's character budget. Output: `OUT/<domain>/<package>/<path under the rule's folder>`
(`.gz` dropped from the name), ready for `curate corpus ingest OUT --vocab N` (the subfolder becomes each row's
`domain` label, the path its `source`). The sha256 over every written (path, text) is printed and checked
against the recipe's `digest` when the recipe has one.

Run: python bench/real_text_corpus.py --recipe bench/real_text_recipe.json --out DIR [--cache DIR]
     python bench/real_text_corpus.py --recipe R --trees DIR --out DIR   (already unpacked: DIR/<package>/...)
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import random
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path


class RecipeError(Exception):
    """A recipe, a package or an output that cannot be used; printed as one `error:` line."""


@dataclass(frozen=True)
class Rule:
    package: str
    under: str
    suffixes: tuple[str, ...]
    skip_dirs: tuple[str, ...]


@dataclass(frozen=True)
class Domain:
    domain: str
    chars: int
    rules: tuple[Rule, ...]


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    file_chars: int
    min_file_chars: int
    packages: tuple[Package, ...]
    domains: tuple[Domain, ...]
    digest: str | None


def load_recipe(path: Path) -> Recipe:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        packages = tuple(Package(p["name"], p["version"], p["sha256"]) for p in raw["packages"])
        domains = tuple(
            Domain(d["domain"], int(d["chars"]), tuple(
                Rule(r["package"], r["under"], tuple(r["suffixes"]), tuple(r.get("skip_dirs", ()))) for r in d["rules"]
            ))
            for d in raw["domains"]
        )
        recipe = Recipe(raw["name"], int(raw["seed"]), int(raw["file_chars"]), int(raw["min_file_chars"]),
                        packages, domains, raw.get("digest"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RecipeError(f"{path}: not a readable recipe ({e})") from None
    known = {p.name for p in recipe.packages}
    for d in recipe.domains:
        for r in d.rules:
            if r.package not in known:
                raise RecipeError(f"{path}: domain {d.domain} names package {r.package}, which the recipe does not pin")
    return recipe


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_deb(pkg: Package, cache: Path) -> Path:
    """The pinned `.deb` in `cache`, downloaded with apt-get if no file there has its sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    for f in sorted(cache.glob(f"{pkg.name}_*.deb")):
        if sha256_file(f) == pkg.sha256:
            return f
    before = set(cache.glob("*.deb"))
    done = subprocess.run(["apt-get", "download", f"{pkg.name}={pkg.version}"], cwd=cache,
                          capture_output=True, text=True)
    new = sorted(set(cache.glob("*.deb")) - before)
    if done.returncode != 0 or not new:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RecipeError(f"apt-get download {pkg.name}={pkg.version} failed: {tail}")
    got = sha256_file(new[0])
    if got != pkg.sha256:
        raise RecipeError(f"{new[0].name}: sha256 {got[:16]}... is not the pinned {pkg.sha256[:16]}... "
                          f"(the registry serves other bytes for {pkg.name} {pkg.version})")
    return new[0]


def deb_data_archive(deb: Path) -> tuple[str, bytes]:
    """The (member name, bytes) of a `.deb`'s `data.tar.*` (an `ar` archive: 8-byte magic, 60-byte headers)."""
    blob = deb.read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise RecipeError(f"{deb}: not a Debian package (no ar magic)")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        body = blob[pos + 60:pos + 60 + size]
        if name.startswith("data.tar"):
            return name, body
        pos += 60 + size + (size & 1)
    raise RecipeError(f"{deb}: no data.tar member")


def unpack_deb(deb: Path, dest: Path) -> None:
    """Unpack the regular files of a `.deb`'s data archive into `dest` (links and devices skipped)."""
    name, body = deb_data_archive(deb)
    if name.endswith(".xz"):
        body = lzma.decompress(body)
    elif name.endswith(".gz"):
        body = gzip.decompress(body)
    elif not name.endswith(".tar"):
        raise RecipeError(f"{deb}: data member {name} is compressed in a way this script cannot read")
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as tar:
        for member in tar.getmembers():
            rel = Path(member.name)
            if not member.isfile() or rel.is_absolute() or ".." in rel.parts:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            target.write_bytes(src.read())


def candidates(trees: Path, rule: Rule) -> list[tuple[str, Path, str]]:
    """(package, file, path under the rule's folder) for every file the rule takes, sorted by that path."""
    root = trees / rule.package / rule.under
    if not root.is_dir():
        raise RecipeError(f"{root}: missing (package {rule.package} not unpacked, or the rule's folder is wrong)")
    found = []
    for f in root.rglob("*"):
        rel = f.relative_to(root)
        if (f.is_file() and not f.is_symlink() and f.suffix in rule.suffixes
                and not any(part in rule.skip_dirs or part.startswith(".") for part in rel.parts)):
            found.append((rule.package, f, rel.as_posix()))
    return sorted(found, key=lambda c: (c[0], c[2]))


def read_text(path: Path) -> str | None:
    """A file's text (`.gz` decompressed), or None when it is binary or not UTF-8."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        return None


def output_name(domain: str, package: str, rel: str) -> str:
    return f"{domain}/{package}/{rel[:-3] if rel.endswith('.gz') else rel}"


def build(recipe: Recipe, trees: Path, out: Path) -> tuple[str, list[tuple[str, int, int]]]:
    """Write the corpus to `out` (which must not exist); return its digest and (domain, files, chars) rows."""
    digest = hashlib.sha256()
    rows = []
    for dom in recipe.domains:
        pool = [c for rule in dom.rules for c in candidates(trees, rule)]
        random.Random(f"{recipe.seed}:{dom.domain}").shuffle(pool)
        total = files = 0
        for package, path, rel in pool:
            if total >= dom.chars:
                break
            text = read_text(path)
            if text is None or len(text) < recipe.min_file_chars:
                continue
            text = text[: min(recipe.file_chars, dom.chars - total)]
            name = output_name(dom.domain, package, rel)
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            digest.update(name.encode() + b"\0" + text.encode("utf-8") + b"\0")
            total += len(text)
            files += 1
        rows.append((dom.domain, files, total))
    return digest.hexdigest(), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=Path(__file__).with_name("real_text_recipe.json"))
    ap.add_argument("--out", type=Path, required=True, help="output folder (must not exist)")
    ap.add_argument("--cache", type=Path, default=Path("real-text-debs"), help="where the .deb files are kept")
    ap.add_argument("--trees", type=Path, help="already unpacked packages (TREES/<package>/...): no download")
    args = ap.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe)
        if args.out.exists():
            raise RecipeError(f"{args.out}: exists (choose a new folder)")
        if not args.out.parent.is_dir():
            raise RecipeError(f"{args.out.parent}: no such folder")
        tmp = args.out.with_name(args.out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        trees = args.trees
        if trees is None:
            trees = tmp / "_unpacked"
            for pkg in recipe.packages:
                deb = fetch_deb(pkg, args.cache)
                print(f"unpacking {deb.name}", flush=True)
                unpack_deb(deb, trees / pkg.name)
        corpus = tmp / "corpus"
        digest, rows = build(recipe, trees, corpus)
        if recipe.digest and digest != recipe.digest:
            raise RecipeError(f"digest {digest[:16]}... differs from the recipe's {recipe.digest[:16]}... "
                              f"(the partial output is kept in {tmp} for inspection)")
        corpus.rename(args.out)
        shutil.rmtree(tmp, ignore_errors=True)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'domain':8} {'files':>6} {'chars':>12}")
    for domain, files, chars in rows:
        print(f"{domain:8} {files:>6} {chars:>12,}")
    print(f"{'total':8} {sum(r[1] for r in rows):>6} {sum(r[2] for r in rows):>12,}")
    print(f"wrote {args.out} ({recipe.name}, digest {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
