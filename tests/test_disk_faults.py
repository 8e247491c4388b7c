"""Nothing leaked: a full, read-only or forbidden output location is one `error:` line (exit 2), no temporaries,
inputs untouched, and the same command succeeds once there is room.

The real faults come from a small tmpfs mounted in a fixture (tests run as root; root ignores chmod, so
read-only is a read-only remount); where mounting is impossible those tests skip. Faults a tmpfs cannot
reach quickly are injected at the atomic-write helper.
"""
from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from corpus_helpers import digest, run_cli, tree
from curate.atomic import atomic_dir, atomic_path, disk_error
from curate.errors import CurateError
from mix_helpers import make_setup


class Disk:
    """A tmpfs mounted at `path` (unmounted by the fixture)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def remount(self, opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", "tmpfs", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk"
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode})")
    try:
        yield Disk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("disk_faults"))


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


FULL = "cannot write (no space left on device)"
READ_ONLY = "cannot write (read-only file system)"


def _commands(setup, out: Path, tmp: Path) -> dict[str, list]:
    docs = tmp / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document {i} " + "word " * 200}) + "\n" for i in range(40)))
    return {
        "build-mix": ["build-mix", setup.scores, "--remove", "10%", "--out", out],
        "synth": ["synth", "--scores", setup.scores, "--rows", "64", "--motif-rows", "20", "--out", out],
        "index": ["index", setup.scores, "--out", out],
        "ingest": ["corpus", "ingest", docs, "--tokenizer", setup.corpus / "tokenizer.json", "--seq-len", "31", "--out", out],
        "tokenizer": ["tokenizer", "train", Path(__file__).parent / "fixtures" / "raw_text", "--vocab", "2000", "--out", out],
    }


@pytest.mark.parametrize("command", ["build-mix", "synth", "index", "ingest", "tokenizer"])
def test_full_disk_is_one_line_and_the_rerun_succeeds_with_room(command, setup, disk, tmp_path, monkeypatch, capsys) -> None:
    out = disk.path / "out"
    args = _commands(setup, out, tmp_path)[command]
    inputs = digest(setup.corpus.parent)
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and FULL in one_line(err) and f"error: {out}" in err
    assert tree(disk.path) == []  # no temporaries, no half folder
    assert digest(setup.corpus.parent) == inputs
    disk.remount("size=32m")
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert [p for p in tree(disk.path) if p.startswith(".")] == []


@pytest.mark.parametrize("command", ["build-mix", "index", "ingest", "tokenizer"])
def test_read_only_location_is_one_line(command, setup, disk, tmp_path, monkeypatch, capsys) -> None:
    disk.remount("ro")
    out = disk.path / "out"
    code, _, err = run_cli(_commands(setup, out, tmp_path)[command], monkeypatch, capsys)
    assert code == 2 and READ_ONLY in one_line(err) and str(out) in err


def test_score_and_train_on_a_read_only_location(setup, disk, tmp_path, monkeypatch, capsys) -> None:
    from score_helpers import build_tiny_corpus, build_tiny_model

    corpus = build_tiny_corpus(tmp_path / "corpus")
    model = build_tiny_model(tmp_path / "model")
    capsys.readouterr()  # the model save's progress bar
    disk.remount("ro")
    code, _, err = run_cli(["score", "--corpus", corpus, "--model", model, "--heads", "1.0", "--window", "0:8",
                            "--out", disk.path / "scores", "--quiet", "--workers", "1"], monkeypatch, capsys)
    assert code == 2 and READ_ONLY in one_line(err) and str(disk.path / "scores") in err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"vocab_size": 300, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                  "intermediate_size": 32, "max_position_embeddings": 32}))
    code, _, err = run_cli(["train", "--corpus", corpus, "--config", config, "--steps", "2", "--checkpoints", "none",
                            "--quiet", "--out", disk.path / "run"], monkeypatch, capsys)
    assert code == 2 and READ_ONLY in one_line(err) and str(disk.path / "run") in err


# ---- injected faults at the atomic helper -------------------------------------------------------------


@pytest.mark.parametrize("code, cause", [(errno.ENOSPC, "no space left on device"), (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied"), (errno.EDQUOT, "disk quota exceeded")])
def test_atomic_path_turns_disk_faults_into_one_line_and_leaves_nothing(code, cause, tmp_path) -> None:
    final = tmp_path / "f.bin"
    with pytest.raises(CurateError) as info:
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"x")
            raise OSError(code, os.strerror(code), str(tmp))
    assert str(info.value) == f"{final}: cannot write ({cause})"
    assert tree(tmp_path) == []


def test_atomic_dir_names_the_folder_asked_for_not_its_temporary(tmp_path, monkeypatch) -> None:
    final = tmp_path / "mix"
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src))

    with pytest.raises(CurateError) as info:
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("a")
            monkeypatch.setattr(os, "replace", full)
            with atomic_path(tmp / "mix.bin") as f:
                f.write_bytes(b"x")
    monkeypatch.setattr(os, "replace", real_replace)
    assert str(info.value) == f"{final / 'mix.bin'}: cannot write (no space left on device)"
    assert tree(tmp_path) == []


def test_wrapped_library_errors_map_to_the_same_line() -> None:
    faiss_like = RuntimeError("Error in faiss::write_index at index_write.cpp:499: Error: 'ret == (size * 4)' failed: "
                              "write error in /d/x/index.faiss: 204755 != 4096000 (No space left on device)")
    assert str(disk_error(faiss_like, "/d/x")) == "/d/x: cannot write (no space left on device)"
    st_like = Exception('Error while serializing: I/O error: Read-only file system (os error 30) at path "/d/.tmpGv"')
    assert str(disk_error(st_like, "/d/run")) == "/d/run: cannot write (read-only file system)"
    inner = OSError(errno.ENOSPC, "No space left on device", "/d/scores/shards/x.parquet")
    try:
        from ray.exceptions import RayTaskError

        wrapped = RayTaskError("score", "Traceback ...", inner).as_instanceof_cause()
    except Exception:  # pragma: no cover - Ray missing
        wrapped = RuntimeError("task failed")
        wrapped.__cause__ = inner
    assert str(disk_error(wrapped)) == "/d/scores/shards/x.parquet: cannot write (no space left on device)"
    assert disk_error(ValueError("bad value")) is None
    assert disk_error(CurateError("permission denied by the user")) is None


def test_everything_the_atomic_helpers_write_has_one_mode(tmp_path) -> None:
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"a")
            os.chmod(tmp, 0o600)  # what safetensors / torch.save leave behind their own temporaries
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "sub").mkdir(mode=0o700)
            (tmp / "sub" / "model.safetensors").write_bytes(b"m")
            os.chmod(tmp / "sub" / "model.safetensors", 0o600)
    finally:
        os.umask(mask)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"a.bin": 0o644, "d": 0o755, "d/sub": 0o755, "d/sub/model.safetensors": 0o644}
