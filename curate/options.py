"""Option fields: a dataclass field carries its CLI flag(s) and help as plain metadata, so an options dataclass
is both the library's input and the command line (the CLI builds its commands from it; no typer here).

One pattern ties a command's options to the library: the command's options class COMPOSES the library's spec or
request (a field `composed(Spec, ...)`), never inherits it nor mirrors its fields to copy them by name. The
composed object's fields are on the command line in place: those it declares with `opt(...)` itself
(`ScoreRequest`, `ExperimentOptions`, `TrainRequest`: the library holds their flags and help) and those the command
names with `spec_flag(...)` (`mix: MixSpec = composed(MixSpec, remove=spec_flag("--remove", help=...), ...)`). The
command's own fields are only how it prints and where it writes (`--json`, `--quiet`, `--out`, ...), and it hands
the library the composed object whole (`options.request`, `options.mix`). `flat=True` keeps the spec's fields among
the command's own in `command.json`, as saved before the spec was composed (a config is read back either way).

`opt(default, "--batch-rows", help=...)` declares an option, `arg(default, help=...)` a positional argument
(`...` as the default = required); `deprecated=("--old",)` keeps old spellings working (hidden from the help, one
warning line on stderr when used). `flag(options, "batch_rows")` is the name a message uses for the field, and
`named(options, "window")` prefixes a plain error from a parser with it. `option_value` / `replaced` read and set a
field wherever it lives (the options or a spec they compose). `to_json` / `from_json` save and load the values
(paths as given) for a replayable config."""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Iterator

from curate.errors import CurateError
from curate.workspace import WORKSPACE_HELP

CLI = "cli"  # the metadata key of a field's CLI declaration
COMPOSED = "composed"  # the metadata key of a field holding a library spec: {"cls": spec class, "flags": {field: cli}, "flat": bool}


def opt(default: Any = ..., *flags: str, help: str, show_default: bool = True, deprecated: tuple[str, ...] = (),
        **extra: Any) -> Any:
    """A dataclass field that is a CLI option `flags[0]` (aliases after it); `...` = required; `deprecated`: old
    spellings that still work for one release."""
    return _field(default, {"flags": tuple(flags), "help": help, "show_default": show_default, "argument": False,
                            "deprecated": tuple(deprecated), "extra": extra})


def arg(default: Any = ..., *, help: str, show_default: bool = False, **extra: Any) -> Any:
    """A dataclass field that is a positional CLI argument; `...` = required."""
    return _field(default, {"flags": (), "help": help, "show_default": show_default, "argument": True, "deprecated": (),
                            "extra": extra})


def workspace_opt(help: str = WORKSPACE_HELP) -> Any:
    """The `--workspace` option field (None: $CURATE_WORKSPACE, else ./curate-workspace)."""
    return opt(None, "--workspace", help=help, show_default=False)


def spec_flag(*flags: str, help: str, show_default: bool = True, deprecated: tuple[str, ...] = (), **extra: Any) -> dict:
    """The CLI declaration of one field of a composed spec (its default is the spec's)."""
    return {"flags": tuple(flags), "help": help, "show_default": show_default, "argument": False,
            "deprecated": tuple(deprecated), "extra": extra}


def composed(spec_cls: type, *, flat: bool = False, **flags: dict) -> Any:
    """A field holding the library's `spec_cls`: its fields declared with `opt(...)` and those named in `flags`
    (field name -> `spec_flag(...)`, which overrides a field's own declaration) are on the command line, the others
    keep the spec's defaults. `flat`: `to_json` stores the spec's fields among the command's own (as a command that
    inherited the spec stored them), else as one object under the field's name."""
    unknown = sorted(set(flags) - {f.name for f in dataclasses.fields(spec_cls)})
    if unknown:
        raise TypeError(f"{spec_cls.__name__} has no field {', '.join(unknown)}")
    return dataclasses.field(default_factory=spec_cls, metadata={COMPOSED: {"cls": spec_cls, "flags": flags, "flat": flat}})


def composed_flags(spec_cls: type, flags: dict) -> dict[str, dict]:
    """The CLI declarations of a composed spec's fields: `flags` (in their order), then the fields the spec declares
    itself with `opt`/`arg` (in its order)."""
    own = {f.name: f.metadata[CLI] for f in dataclasses.fields(spec_cls) if CLI in f.metadata and f.name not in flags}
    return {**flags, **own}


@dataclasses.dataclass(frozen=True)
class CliParam:
    """One command-line parameter of an options class: `owner` is the composed spec field holding it (or None)."""

    name: str
    cli: dict
    default: Any  # dataclasses.MISSING: required
    hint: Any
    owner: str | None = None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def cli_params(cls: type) -> list[CliParam]:
    """Every command-line parameter of an options class, in declaration order, composed specs' fields in place."""
    hints = typing.get_type_hints(cls)
    out: list[CliParam] = []
    for f in dataclasses.fields(cls):
        if CLI in f.metadata:
            out.append(CliParam(f.name, f.metadata[CLI], _default(f), hints[f.name]))
        elif COMPOSED in f.metadata:
            spec_cls, flags = f.metadata[COMPOSED]["cls"], f.metadata[COMPOSED]["flags"]
            spec_hints = typing.get_type_hints(spec_cls)
            by_name = {g.name: g for g in dataclasses.fields(spec_cls)}
            for name, cli in composed_flags(spec_cls, flags).items():
                out.append(CliParam(name, cli, _default(by_name[name]), spec_hints[name], owner=f.name))
    seen: set[str] = set()
    for p in out:
        if p.name in seen:
            raise TypeError(f"{cls.__name__}: two command-line parameters named {p.name!r}")
        seen.add(p.name)
    return out


def _owner(cls: type, name: str) -> str | None:
    """The field of `cls` that holds field `name`: None for its own field, else the composed spec's field."""
    names = {f.name for f in dataclasses.fields(cls)}
    if name in names:
        return None
    for f in dataclasses.fields(cls):
        if COMPOSED in f.metadata and name in {g.name for g in dataclasses.fields(f.metadata[COMPOSED]["cls"])}:
            return f.name
    raise KeyError(name)


def has_option(options: Any, name: str) -> bool:
    """Whether the options (or a spec they compose) have field `name`."""
    try:
        _owner(options if isinstance(options, type) else type(options), name)
    except KeyError:
        return False
    return True


def option_value(options: Any, name: str) -> Any:
    """The value of field `name` of the options or of a spec they compose (KeyError: neither has it)."""
    owner = _owner(type(options), name)
    return getattr(options if owner is None else getattr(options, owner), name)


def replaced(options: Any, **changes: Any) -> Any:
    """The options with each changed field replaced where it lives (the options or a spec they compose)."""
    top: dict = {}
    parts: dict[str, dict] = {}
    for name, value in changes.items():
        owner = _owner(type(options), name)
        if owner is None:
            top[name] = value
        else:
            parts.setdefault(owner, {})[name] = value
    for owner, part in parts.items():
        top[owner] = dataclasses.replace(top.get(owner, getattr(options, owner)), **part)
    return dataclasses.replace(options, **top)


def build_options(cls: type, values: dict) -> Any:
    """An options object from command-line values by parameter name (composed specs built from theirs)."""
    params = {p.name: p for p in cli_params(cls)}
    top: dict = {}
    parts: dict[str, dict] = {}
    for name, value in values.items():
        owner = params[name].owner if name in params else None
        if owner is None:
            top[name] = value
        else:
            parts.setdefault(owner, {})[name] = value
    for f in dataclasses.fields(cls):
        if COMPOSED in f.metadata and f.name not in top:
            top[f.name] = f.metadata[COMPOSED]["cls"](**parts.get(f.name, {}))
    return cls(**top)


def _field(default: Any, cli: dict) -> Any:
    if default is ...:
        return dataclasses.field(kw_only=True, metadata={CLI: cli})
    return dataclasses.field(default=default, metadata={CLI: cli})


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are on the command line, in declaration order."""
    return [f for f in dataclasses.fields(cls) if CLI in f.metadata]


def flag(options: Any, name: str) -> str:
    """How messages name field `name` (of the options or of a spec they compose): its first flag, or its argument
    name in capitals."""
    for p in cli_params(options if isinstance(options, type) else type(options)):
        if p.name == name:
            extra = p.cli.get("extra", {})
            if p.cli["argument"]:
                return str(extra.get("metavar") or name.upper())
            return p.cli["flags"][0]
    if any(f.name == name for f in dataclasses.fields(options)):
        return name
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
    """The field values as JSON data (paths as given, enums by value, a composed spec as an object, or its fields
    among the others when it is composed `flat`)."""
    out = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if COMPOSED in f.metadata and f.metadata[COMPOSED]["flat"]:
            out.update(to_json(value))
            continue
        if COMPOSED in f.metadata:
            value = to_json(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        out[f.name] = value
    return out


def from_json(cls: type, data: dict) -> Any:
    """An options object from `to_json` data (unknown keys are an error; paths and enums restored)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = dict(data)
    for f in fields.values():  # a spec composed `flat`, or saved before it was composed, has its fields among the others
        if COMPOSED in f.metadata and f.name not in data:
            spec_names = {g.name for g in dataclasses.fields(f.metadata[COMPOSED]["cls"])}
            data[f.name] = {k: data.pop(k) for k in list(data) if k in spec_names and k not in fields}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise CurateError(f"the saved config has options this command does not know: {', '.join(unknown)}")
    values = {}
    for name, value in data.items():
        if COMPOSED in fields[name].metadata and isinstance(value, dict):
            values[name] = from_json(fields[name].metadata[COMPOSED]["cls"], value)
            continue
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
