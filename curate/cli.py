"""The `curate` command line: sub-commands live in `curate.commands.*`, each with `register(app)`."""
from __future__ import annotations

import importlib
import sys
from typing import Annotated

import click
import typer

from curate.atomic import disk_error, os_error
from curate.commands.options import HELP_OPTIONS, curate_version
from curate.errors import CurateError

app = typer.Typer(
    name="curate",
    help="Find, prove and curate the pretraining rows that build a circuit (Mechanistic Data Attribution).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: `[r, r]` and `[default: 8192]` print as written
    context_settings=HELP_OPTIONS,
    epilog="Example: curate score --circuit induction  (every command: -h for its options and an example)",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"curate {curate_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Find, prove and curate the pretraining rows that build a circuit (Mechanistic Data Attribution)."""


# One line per command module; each defines `register(app: typer.Typer) -> None`.
COMMAND_MODULES = [
    "curate.commands.corpus",
    "curate.commands.tokenizer",
    "curate.commands.build_default",
    "curate.commands.circuits",
    "curate.commands.train",
    "curate.commands.structure",
    "curate.commands.score",
    "curate.commands.mix",
    "curate.commands.experiment",
    "curate.commands.evaluate",
    "curate.commands.options",  # `curate replay FOLDER`
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console entry point: CurateError (and any OSError) becomes one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except CurateError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors and the like (typer >= 0.26 vendors click as typer._click)
        if isinstance(e, (click.exceptions.Exit, typer.Exit)):
            sys.exit(e.exit_code)
        disk = disk_error(e)  # a full / read-only / forbidden location, however deeply wrapped (Ray, faiss, safetensors)
        if disk is not None:
            print(f"error: {disk}", file=sys.stderr)
            sys.exit(2)
        if isinstance(e, OSError):  # any other file-system refusal (a file where a folder must be, a name too long)
            print(f"error: {os_error(e)}", file=sys.stderr)
            sys.exit(2)
        if type(e).__name__ == "NoArgsIsHelpError" and hasattr(e, "show"):
            e.show()  # prints the help text
            sys.exit(2)
        if isinstance(e, click.ClickException) or (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            print(f"error: {e.format_message()}", file=sys.stderr)
            sys.exit(2)
        raise


if __name__ == "__main__":
    main()
