"""bench/real_text_corpus.py: the pinned real-text recipe unpacks .deb files exactly, applies its extraction
rules deterministically within budget, checks its digest, and fails with one error line on bad packages."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
import os
import stat
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "real_text_debs"
RECIPE = ROOT / "bench" / "real_text_recipe.json"


@pytest.fixture(scope="module")
def rtc():
    spec = importlib.util.spec_from_file_location("real_text_corpus", ROOT / "bench" / "real_text_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode("ascii")
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def _tiny_deb(path: Path, files: dict[str, bytes], link: str) -> None:
    """A minimal `.deb`: ar archive of debian-binary, control.tar.xz and data.tar.xz (with one symlink)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("./" + link)
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    control = io.BytesIO()
    with tarfile.open(fileobj=control, mode="w:xz"):
        pass
    path.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n") + _ar_member("control.tar.xz", control.getvalue())
                     + _ar_member("data.tar.xz", lzma.compress(buf.getvalue())))


def test_unpack_deb_round_trips_regular_files_and_skips_links(rtc, tmp_path):
    files = {"usr/share/a/one.sty": b"\\def\\x{1}\n" * 50, "usr/share/a/sub/two.go": b"package main\n" * 7}
    deb = tmp_path / "pkg_1.0_all.deb"
    _tiny_deb(deb, files, "usr/share/a/link")
    rtc.unpack_deb(deb, tmp_path / "tree")
    got = {p.relative_to(tmp_path / "tree").as_posix(): p.read_bytes()
           for p in (tmp_path / "tree").rglob("*") if p.is_file()}
    assert got == files
    assert not (tmp_path / "tree" / "usr/share/a/link").exists()
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    with pytest.raises(rtc.RecipeError, match="no ar magic"):
        rtc.unpack_deb(tmp_path / "bad.deb", tmp_path / "t2")


def _small(recipe, chars: int):
    return dataclasses.replace(recipe, digest=None, file_chars=4000,
                               domains=tuple(dataclasses.replace(d, chars=chars) for d in recipe.domains))


def test_recipe_rules_on_the_fixture_are_deterministic_and_within_budget(rtc, tmp_path):
    recipe = _small(rtc.load_recipe(RECIPE), 12000)
    d1, rows1 = rtc.build(recipe, FIXTURE, tmp_path / "a")
    d2, rows2 = rtc.build(recipe, FIXTURE, tmp_path / "b")
    assert d1 == d2 and rows1 == rows2
    assert [r[0] for r in rows1] == ["latex", "code", "xml", "man", "prose"]
    for domain, files, chars in rows1:
        assert files >= 2 and chars == 12000, (domain, files, chars)  # the budget met exactly, the last file cut
    written = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all(not w.endswith(".gz") for w in written)
    man = [w for w in written if w.startswith("man/")]
    assert man and all((tmp_path / "a" / w).read_text().lstrip().startswith((".\\\"", "'\\\"", ".TH", ".so"))
                       for w in man)  # decompressed troff
    assert not any("copyright" in w for w in written)  # only the rules' folders are read
    # the digest is the sha256 over (name, text) in the order written: recompute it from the files
    again = dataclasses.replace(recipe, seed=1)
    d3, _ = rtc.build(again, FIXTURE, tmp_path / "c")
    assert d3 != d1  # another seed takes other files / another order


def test_digest_mismatch_and_unknown_package_are_one_line_errors(rtc, tmp_path, capsys):
    raw = RECIPE.read_text()
    spec = json.loads(raw)
    spec["digest"] = "0" * 64
    for d in spec["domains"]:
        d["chars"] = 5000
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    out = tmp_path / "out"
    assert rtc.main(["--recipe", str(bad), "--trees", str(FIXTURE), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: digest ")
    assert not out.exists()
    unknown = tmp_path / "unknown.json"
    unknown.write_text(raw.replace('{"package": "fortunes"', '{"package": "no-such-package"'))
    assert rtc.main(["--recipe", str(unknown), "--trees", str(FIXTURE), "--out", str(out)]) == 2
    assert "does not pin" in capsys.readouterr().err


def test_fetch_refuses_bytes_that_are_not_the_pinned_ones(rtc, tmp_path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    script = fake / "apt-get"
    script.write_text("#!/bin/sh\necho 'other bytes' > \"$(echo $2 | cut -d= -f1)_9.9_all.deb\"\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    pkg = rtc.Package("texlive-latex-extra", "2022.20230122-4", "ab" * 32)
    with pytest.raises(rtc.RecipeError, match="is not the pinned"):
        rtc.fetch_deb(pkg, tmp_path / "cache")
    # a cached file with the pinned sha256 is reused without asking the registry
    good = tmp_path / "cache" / "texlive-latex-extra_x_all.deb"
    good.write_bytes(b"pinned bytes")
    pinned = rtc.Package(pkg.name, pkg.version, hashlib.sha256(b"pinned bytes").hexdigest())
    script.write_text("#!/bin/sh\nexit 1\n")
    assert rtc.fetch_deb(pinned, tmp_path / "cache") == good


def test_gz_members_decompress_and_binary_files_are_skipped(rtc, tmp_path):
    (tmp_path / "a.1.gz").write_bytes(gzip.compress(b".TH A 1\n"))
    (tmp_path / "b.bin").write_bytes(b"\0\1\2")
    assert rtc.read_text(tmp_path / "a.1.gz") == ".TH A 1\n"
    assert rtc.read_text(tmp_path / "b.bin") is None
