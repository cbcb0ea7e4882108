"""The ``rustrade-store`` command: migrate, inspect and repair state, move it between databases.

One module per job: :mod:`.exits` (exit codes and the one error commands raise), :mod:`.parser`
(the table of commands, the parser and shell completion built from it), :mod:`.entry` (the
entry point), :mod:`.output`, :mod:`.prompts`, :mod:`.opening`, and the commands by what they
do: :mod:`.schema`, :mod:`.doctor`, :mod:`.looking`, :mod:`.changing`, :mod:`.moving`,
:mod:`.leases`. Importing this package loads no database library.
"""

from __future__ import annotations

from .entry import main
from .exits import (
    EXIT_BAD_INPUT,
    EXIT_CONFLICT,
    EXIT_INTERRUPTED,
    EXIT_LEASED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_STORAGE,
    CommandError,
)
from .parser import build_parser, completion_script

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CONFLICT",
    "EXIT_INTERRUPTED",
    "EXIT_LEASED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "CommandError",
    "build_parser",
    "completion_script",
    "main",
]
