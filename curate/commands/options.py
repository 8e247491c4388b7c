"""Commands built from options dataclasses: `command(app, "score", ScoreOptions, run)` makes the typer command
whose flags, defaults and help are the dataclass's fields (declared with `curate.options.opt` / `arg`), builds
the options object from the parsed values, validates it (`options.validate()`, errors name the flag) and calls
`run(options)`. A run folder keeps the resolved options in `command.json` (`save_config`); `curate replay
FOLDER` runs the same command again from it."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from curate.errors import CurateError
from curate.options import CLI, cli_fields, from_json, plain_type, to_json

CONFIG_FILE = "command.json"  # not config.json: a run folder must not look like a Hugging Face model folder

COMMANDS: dict[str, tuple[type, Callable[[Any], None]]] = {}
"""Every command built by `command`, by name: its options class and its run function (for `curate replay`)."""


def command(app: typer.Typer, name: str, options_cls: type, run: Callable[[Any], None], cli_name: str | None = None,
            **kwargs: Any) -> None:
    """Register `name` on `app`: a typer command whose parameters are `options_cls`'s CLI fields. `cli_name`: its
    name on the command line when `name` (unique across commands, as `command.json` records it) differs."""
    hints = typing.get_type_hints(options_cls)
    params = []
    ordered = cli_fields(options_cls)
    ordered.sort(key=lambda f: f.name == "workspace")  # --workspace last, as everywhere
    for f in ordered:
        cli = f.metadata[CLI]
        hint = hints[f.name]
        base = plain_type(hint)
        kind = Optional[base] if base is not hint else hint
        if cli["argument"]:
            extra = {"metavar": f.name.upper(), **cli["extra"]}
            info = typer.Argument(help=cli["help"], show_default=cli["show_default"], **extra)
        else:
            info = typer.Option(*cli["flags"], help=cli["help"], show_default=cli["show_default"], **cli["extra"])
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info]))

    @functools.wraps(run)
    def wrapper(**values: Any) -> None:
        dispatch(options_cls(**values), run)

    del wrapper.__wrapped__  # typer must read the signature below, not run's
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}
    COMMANDS[name] = (options_cls, run)
    app.command(cli_name or name, **kwargs)(wrapper)


def dispatch(options: Any, run: Callable[[Any], None]) -> None:
    """Validate the options (one CurateError naming the flag, before anything is written), then run."""
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate()
    run(options)


def curate_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("curate")
    except PackageNotFoundError:
        return "unknown"


def save_config(folder: Path, name: str, options: Any) -> Path:
    """Write `folder/command.json` (atomically): the command and its resolved options, to replay the run."""
    from curate.atomic import write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    write_json(path, {"command": name, "options": to_json(options), "curate_version": curate_version()})
    return path


def load_config(path: Path) -> tuple[str, Any]:
    """(command name, options object) from a folder's `command.json` (or the file itself)."""
    from curate.atomic import read_json

    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    if not file.is_file():
        raise CurateError(f"{path}: no {CONFIG_FILE} (not a folder written by a curate command that saves its config)")
    body = read_json(file, CONFIG_FILE)
    name = body.get("command") if isinstance(body, dict) else None
    if name not in COMMANDS or not isinstance(body.get("options"), dict):
        raise CurateError(f"{file}: names no known command ({name!r})")
    options_cls, _ = COMMANDS[name]
    return name, from_json(options_cls, body["options"])


def replay(path: Path) -> None:
    """Run the command saved in `path` again with the same options."""
    name, options = load_config(path)
    dispatch(options, COMMANDS[name][1])


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay_command(
        folder: Annotated[Path, typer.Argument(help=f"A folder a command saved its options in ({CONFIG_FILE}), or that file.", show_default=False)],
    ) -> None:
        """Run a saved command again from its folder's command.json (score, train, experiment, build-mix, corpus ingest, tokenizer train, index)."""
        replay(folder)
