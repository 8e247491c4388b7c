"""The manifest of a sharded job: what the job is (its fingerprint) and which shards are finished.

Only the driver writes it, atomically, after every finished shard, so a killed run resumes by
skipping the shards it lists (whose files still match their checksums).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from curate.atomic import file_sha256, write_json
from curate.errors import CurateError

MANIFEST_FILE = "manifest.json"


def fingerprint_hash(fingerprint: dict) -> str:
    """A short stable hash of a JSON-able job description."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class ShardRecord:
    """One finished shard: its row range, file and checksum."""

    start: int
    stop: int
    file: str
    sha256: str
    rows: int
    seconds: float = 0.0
    attempts: int = 1
    node: str = ""  # the Ray node that scored it ("" when not recorded)

    @property
    def key(self) -> str:
        return shard_key(self.start, self.stop)


def shard_key(start: int, stop: int) -> str:
    return f"{start:012d}-{stop:012d}"


@dataclass
class Manifest:
    """Job identity plus finished shards, stored as `<out>/manifest.json`."""

    out_dir: Path
    fingerprint: dict
    shards: dict[str, ShardRecord] = field(default_factory=dict)
    retries: list[dict] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.out_dir / MANIFEST_FILE

    @classmethod
    def open(cls, out_dir: Path, fingerprint: dict, force: bool = False) -> "Manifest":
        """Load the manifest for this job, or start a new one.

        A manifest written for a different job (other model, factors, probe, window, ...) is an
        error unless `force`, in which case its shards are discarded.
        """
        path = out_dir / MANIFEST_FILE
        if not path.exists():
            return cls(out_dir, fingerprint)
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise CurateError(f"{path}: corrupt manifest (not JSON); remove it, or force a fresh start") from None
        old = raw.get("fingerprint", {})
        if old != json.loads(json.dumps(fingerprint, default=str)):
            if not force:
                changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise CurateError(
                    f"{out_dir}: holds results of a different job (changed: {', '.join(changed)}); "
                    "use another output folder, or force a fresh start to discard them"
                )
            for rec in raw.get("shards", {}).values():
                (out_dir / rec["file"]).unlink(missing_ok=True)
            return cls(out_dir, fingerprint)
        shards = {k: ShardRecord(**v) for k, v in raw.get("shards", {}).items()}
        return cls(out_dir, fingerprint, shards, raw.get("retries", []))

    def finished(self, start: int, stop: int) -> bool:
        """True when the shard is recorded and its file still has the recorded checksum."""
        rec = self.shards.get(shard_key(start, stop))
        if rec is None:
            return False
        f = self.out_dir / rec.file
        return f.exists() and file_sha256(f) == rec.sha256

    def record(self, rec: ShardRecord) -> None:
        self.shards[rec.key] = rec
        self.save()

    def save(self) -> None:
        write_json(
            self.path,
            {
                "fingerprint": self.fingerprint,
                "fingerprint_hash": fingerprint_hash(self.fingerprint),
                "shards": {k: vars(v) for k, v in sorted(self.shards.items())},
                "retries": self.retries,
            },
        )
