"""Option fields: a dataclass field carries its CLI flag(s) and help as plain metadata, so an options dataclass
is both the library's input and the command line (the CLI builds its commands from it; no typer here).

`opt(default, "--batch-rows", help=...)` declares an option, `arg(default, help=...)` a positional argument
(`...` as the default = required). `flag(options, "batch_rows")` is the name a message uses for the field, and
`named(options, "window")` prefixes a plain error from a parser with it. `to_json` / `from_json` save and
load the values (paths as given) for a replayable config."""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Iterator

from curate.errors import CurateError

CLI = "cli"  # the metadata key of a field's CLI declaration


def opt(default: Any = ..., *flags: str, help: str, show_default: bool = True, **extra: Any) -> Any:
    """A dataclass field that is a CLI option `flags[0]` (aliases after it); `...` = required."""
    return _field(default, {"flags": tuple(flags), "help": help, "show_default": show_default, "argument": False, "extra": extra})


def arg(default: Any = ..., *, help: str, show_default: bool = False, **extra: Any) -> Any:
    """A dataclass field that is a positional CLI argument; `...` = required."""
    return _field(default, {"flags": (), "help": help, "show_default": show_default, "argument": True, "extra": extra})


def workspace_opt() -> Any:
    """The `--workspace` option field (None: $CURATE_WORKSPACE, else ./curate-workspace)."""
    from curate.workspace import WORKSPACE_HELP

    return opt(None, "--workspace", help=WORKSPACE_HELP, show_default=False)


def _field(default: Any, cli: dict) -> Any:
    if default is ...:
        return dataclasses.field(kw_only=True, metadata={CLI: cli})
    return dataclasses.field(default=default, metadata={CLI: cli})


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are on the command line, in declaration order."""
    return [f for f in dataclasses.fields(cls) if CLI in f.metadata]


def flag(options: Any, name: str) -> str:
    """How messages name field `name`: its first flag, or its argument name in capitals."""
    for f in dataclasses.fields(options):
        if f.name == name:
            cli = f.metadata.get(CLI)
            if cli is None:
                return name
            extra = cli.get("extra", {})
            if cli["argument"]:
                return str(extra.get("metavar") or name.upper())
            return cli["flags"][0]
    raise KeyError(name)


def option_error(options: Any, name: str, message: str) -> CurateError:
    """A CurateError about field `name`, naming its flag: `--x VALUE: message` style is up to the caller."""
    return CurateError(f"{flag(options, name)} {message}")


@contextlib.contextmanager
def named(options: Any, name: str) -> Iterator[None]:
    """Re-raise a plain CurateError/ValueError from a parser of field `name` with the field's flag in front."""
    try:
        yield
    except (CurateError, ValueError) as e:
        text = str(e)
        sep = " " if text[:1] in ("'", '"') or text[:1].isdigit() else ": "  # `--x 'v': ...` or `--x: ...`
        raise CurateError(f"{flag(options, name)}{sep}{text}") from None


def check_positive(options: Any, *names: str, minimum: int = 1) -> None:
    """Each named field, when set, is at least `minimum` (an error names the flag)."""
    for name in names:
        value = getattr(options, name)
        if value is not None and value < minimum:
            raise option_error(options, name, f"must be at least {minimum} (got {value})")


def to_json(options: Any) -> dict:
    """The field values as JSON data (paths as given, enums by value)."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def from_json(cls: type, data: dict) -> Any:
    """An options object from `to_json` data (unknown keys are an error; paths and enums restored)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CurateError(f"the saved config has options this command does not know: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        base = plain_type(hints[name])
        if value is not None and isinstance(base, type) and issubclass(base, (Path, enum.Enum)):
            value = base(value)
        values[name] = value
    return cls(**values)


def plain_type(hint: Any) -> Any:
    """`X | None` / Optional[X] -> X; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint
