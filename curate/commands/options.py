"""Commands built from options dataclasses: `command(app, "score", ScoreOptions, run)` makes the typer command
whose flags, defaults and help are the dataclass's fields (declared with `curate.options.opt` / `arg`), builds
the options object from the parsed values, validates it (`options.validate()`, errors name the flag) and calls
`run(options)`. A run folder keeps the resolved options in `command.json` (`save_config`); `curate replay
FOLDER` runs the same command again from it."""
from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from curate.atomic import read_json, write_json
from curate.errors import CurateError
from curate.options import (COMPOSED, arg, build_options, cli_params, from_json, has_option, option_value, plain_type, replaced,
                            to_json, workspace_opt)
from curate.paths import portable, resolve_stored
from curate.workspace import resolve_workspace

CONFIG_FILE = "command.json"  # not config.json: a run folder must not look like a Hugging Face model folder

COMMANDS: dict[str, tuple[type, Callable[[Any], None]]] = {}
"""Every command built by `command`, by name: its options class and its run function (for `curate replay`)."""


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}  # the context settings of every command group

OLD = "_old_"  # the parameter name prefix of a field's deprecated spellings


def command(app: typer.Typer, name: str, options_cls: type, run: Callable[[Any], None], cli_name: str | None = None,
            example: str | None = None, **kwargs: Any) -> None:
    """Register `name` on `app`: a typer command whose parameters are `options_cls`'s CLI fields. `cli_name`: its
    name on the command line when `name` (unique across commands, as `command.json` records it) differs;
    `example`: one command line shown at the end of its help."""
    params = []
    old: list[tuple[str, tuple[str, ...], str]] = []  # (parameter, old spellings, new spelling)
    required: list[tuple[str, str]] = []  # (parameter, flag) of required options that have old spellings
    ordered = cli_params(options_cls)
    ordered.sort(key=lambda p: p.name == "workspace")  # --workspace last, as everywhere
    for p in ordered:
        cli, base = p.cli, plain_type(p.hint)
        kind = Optional[base] if base is not p.hint else p.hint
        if cli["argument"]:
            extra = {"metavar": p.name.upper(), **cli["extra"]}
            info = typer.Argument(help=cli["help"], show_default=cli["show_default"], **extra)
        else:
            info = typer.Option(*cli["flags"], help=cli["help"], show_default=cli["show_default"], **cli["extra"])
        default = inspect.Parameter.empty if p.default is dataclasses.MISSING else p.default
        if default is inspect.Parameter.empty and cli["deprecated"]:  # required, but an old spelling may give it
            default, kind = None, Optional[base]
            required.append((p.name, cli["flags"][0]))
        params.append(inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info]))
        if cli["deprecated"]:
            hidden = typer.Option(*cli["deprecated"], hidden=True, show_default=False, **cli["extra"])
            params.append(inspect.Parameter(OLD + p.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[Optional[base], hidden]))
            old.append((p.name, cli["deprecated"], cli["flags"][0]))

    @functools.wraps(run)
    def wrapper(**values: Any) -> None:
        for field, spellings, new in old:
            value = values.pop(OLD + field)
            if value is not None:
                used = [s for s in spellings if any(a == s or a.startswith(s + "=") for a in sys.argv)] or list(spellings)
                print(f"warning: {'/'.join(used)} is deprecated in `curate {cli_name or name}`; use {new} "
                      "(the old spelling goes in the next release)", file=sys.stderr)
                values[field] = value
        for field, new in required:
            if values.get(field) is None:
                raise CurateError(f"missing option {new}")
        dispatch(build_options(options_cls, values), run)

    del wrapper.__wrapped__  # typer must read the signature below, not run's
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {}
    COMMANDS[name] = (options_cls, run)
    if example is not None:
        kwargs["epilog"] = f"Example: {example}"
    app.command(cli_name or name, **kwargs)(wrapper)


def dispatch(options: Any, run: Callable[[Any], None]) -> None:
    """Validate the options (one CurateError naming the flag, before anything is written), then run."""
    validate = getattr(options, "validate", None)
    if validate is not None:
        validate()
    run(options)


def curate_version() -> str:
    """The installed package's version ("unknown" when it is not installed)."""
    try:
        return version("curate")
    except PackageNotFoundError:
        return "unknown"


STR_PATH_FIELDS = {"corpus", "model", "init_from", "plan", "heldout", "tokenizer", "pool", "config", "checkpoint"}
"""Options typed `str` that hold a path when one exists by that name (else a hub or tokenizer name, kept as is)."""


def _is_local_path(key: str, value: Any, hint: Any) -> bool:
    """A Path-typed value, or a string option of STR_PATH_FIELDS naming a file, folder or Megatron prefix here."""
    if isinstance(value, Path) or (value is not None and plain_type(hint) is Path):
        return True
    if key not in STR_PATH_FIELDS or not isinstance(value, str) or not value:
        return False
    p = Path(value).expanduser()
    return p.exists() or p.with_name(p.name + ".idx").is_file()


def save_config(folder: Path, name: str, options: Any, resolved: dict | None = None) -> Path:
    """Write `folder/command.json` (atomically): the command and its options with the defaults the command resolved
    (`resolved`: field -> value) filled in and every local path stored relative to `folder` (`paths` lists them),
    so `curate replay FOLDER` runs the same command from any working directory."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hints = typing.get_type_hints(type(options))
    if has_option(options, "workspace") and option_value(options, "workspace") is None:
        resolved = {"workspace": resolve_workspace(None), **(resolved or {})}
    values = to_json(replaced(options, **resolved) if resolved else options)
    paths = []
    for f in dataclasses.fields(options):
        if COMPOSED in f.metadata:  # a composed spec's paths: "mix.pool", or "corpus" when it is saved flat
            spec_cls = f.metadata[COMPOSED]["cls"]
            spec_hints = typing.get_type_hints(spec_cls)
            flat = f.metadata[COMPOSED]["flat"]
            inner = values if flat else values.get(f.name)
            if not isinstance(inner, dict):
                continue
            for key in [g.name for g in dataclasses.fields(spec_cls)] if flat else list(inner):
                if _is_local_path(key, inner.get(key), spec_hints.get(key)):
                    inner[key] = portable(inner[key], folder)
                    paths.append(key if flat else f"{f.name}.{key}")
        elif _is_local_path(f.name, values.get(f.name), hints[f.name]):
            values[f.name] = portable(values[f.name], folder)
            paths.append(f.name)
    path = folder / CONFIG_FILE
    write_json(path, {"command": name, "options": values, "paths": paths, "curate_version": curate_version()})
    return path


def load_config(path: Path) -> tuple[str, Any]:
    """(command name, options object) from a folder's `command.json` (or the file itself); stored relative paths
    are read from the folder that holds the file."""
    path = Path(path)
    file = path / CONFIG_FILE if path.is_dir() else path
    if not file.is_file():
        raise CurateError(f"{path}: no {CONFIG_FILE} (not a folder written by a curate command that saves its config)")
    body = read_json(file, CONFIG_FILE)
    name = body.get("command") if isinstance(body, dict) else None
    if name not in COMMANDS or not isinstance(body.get("options"), dict):
        raise CurateError(f"{file}: names no known command ({name!r})")
    options_cls, _ = COMMANDS[name]
    values = dict(body["options"])
    for key in body.get("paths") or []:
        owner, _, field = key.rpartition(".")
        where = values.get(owner) if owner else values
        if isinstance(where, dict) and isinstance(where.get(field), str):
            where[field] = resolve_stored(where[field], file.parent)
    return name, from_json(options_cls, values)


def replay(path: Path, workspace: Path | None = None) -> None:
    """Run the command saved in `path` again with the same options (in `workspace` when given)."""
    name, options = load_config(path)
    if workspace is not None:
        if not has_option(options, "workspace"):
            raise CurateError(f"--workspace: `{name}` does not use a workspace; drop it")
        options = replaced(options, workspace=workspace)
    if name == "train" and option_value(options, "init_from") is None and options.out is not None \
            and (Path(options.out) / "run.json").is_file():
        # the run is there: replaying it continues it with its saved spec (a finished run is left as it is)
        options = dataclasses.replace(options, resume=True)
    dispatch(options, COMMANDS[name][1])


@dataclasses.dataclass
class ReplayOptions:
    """`curate replay`."""

    folder: Path = arg(help=f"A folder a command saved its options in ({CONFIG_FILE}), or that file.")
    workspace: Path | None = workspace_opt("Run in this workspace instead of the saved one.")


def replay_command(o: ReplayOptions) -> None:
    """Run a saved command again from its folder's command.json (score, train, experiment, build-mix, corpus ingest,
    tokenizer train, index)."""
    replay(o.folder, o.workspace)


def register(app: typer.Typer) -> None:
    command(app, "replay", ReplayOptions, replay_command, example="curate replay curate-workspace/mixes/induction-remove-10pct")
    del COMMANDS["replay"]  # a replay is not itself replayed
