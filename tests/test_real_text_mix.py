"""bench/real_text_mix.py: the seeded real-text sample is deterministic, per-domain budgeted, and ingestible."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def mix_module():
    spec = importlib.util.spec_from_file_location("real_text_mix", ROOT / "bench" / "real_text_mix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources(tmp_path: Path) -> dict[str, list[Path]]:
    src = tmp_path / "src"
    src.mkdir()
    files: dict[str, list[Path]] = {"man": [], "python": []}
    for i in range(6):
        p = src / f"page{i}.1.gz"
        p.write_bytes(gzip.compress((f".TH PAGE{i} 1\n.SH NAME\npage{i} \\- does thing {i}\n" * 20).encode()))
        files["man"].append(p)
        q = src / f"mod{i}.py"
        q.write_text(f"def f{i}(x):\n    return x + {i}\n" * 30, encoding="utf-8")
        files["python"].append(q)
    (src / "bin.py").write_bytes(b"\0\1\2" * 200)  # binary: skipped
    files["python"].append(src / "bin.py")
    return files


def test_sample_is_seeded_budgeted_and_decompressed(tmp_path, mix_module, monkeypatch, capsys):
    files = _sources(tmp_path)
    monkeypatch.setattr(mix_module, "domain_files", lambda: files)
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        assert mix_module.main(["--out", str(out), "--chars", "4000", "--file-chars", "700", "--seed", str(seed)]) == 0
        outs.append({p.relative_to(out).as_posix(): p.read_text() for p in sorted(out.rglob("*.txt"))})
    a, b, c = outs
    assert a == b and a != c
    for domain in ("man", "python"):
        texts = [t for k, t in a.items() if k.startswith(domain + "/")]
        assert sum(len(t) for t in texts) == 2000  # the budget split evenly, the last file cut to fit
        assert all(len(t) <= 700 for t in texts)
    assert all(t.startswith(".TH PAGE") for k, t in a.items() if k.startswith("man/"))
    assert not any("\0" in t for t in a.values())
    assert "total" in capsys.readouterr().out
    assert mix_module.main(["--out", str(tmp_path / "a")]) == 2  # refuses a non-empty folder
