"""What the operator's commands (list, restore) share: --help, and how a usage error ends."""

from __future__ import annotations

import sys

from . import PLUGIN_NAME

USAGE_ERROR = 2


class UsageError(Exception):
    """A command line that cannot be run; the message says why."""


def asks_for_help(argv: list[str], help_text: str) -> bool:
    """True, with the help printed, when -h or --help is among the arguments."""
    if any(arg in ("-h", "--help") for arg in argv):
        sys.stdout.write(help_text)
        return True
    return False


def usage_failure(command: str, error: UsageError) -> int:
    sys.stderr.write(f"{PLUGIN_NAME} {command}: {error}\nrun '{PLUGIN_NAME} {command} --help' for usage\n")
    return USAGE_ERROR
