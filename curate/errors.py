"""User-facing errors: the CLI prints them as one line and exits with code 2."""
from __future__ import annotations


class CurateError(Exception):
    """Bad input or a state the user must fix; printed as one line, exit code 2."""
