"""curate: mechanistic data attribution for pretraining corpora.

Installed, `curate.attribution`, `curate.training`, `curate.augment` and `curate.pipelines` are the
repository's top-level folders of those names (the build's package-dir mapping). Run from a source
checkout without installing (or from a second worktree), the same names resolve to the folders
beside this one, so the code under test is always the checkout's own.
"""
from __future__ import annotations

from pathlib import Path

_SUBPACKAGES = ("attribution", "training", "augment", "pipelines")
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and all((_checkout / name / "__init__.py").is_file() for name in _SUBPACKAGES):
    __path__.append(str(_checkout))  # type: ignore[name-defined]  # noqa: F821
