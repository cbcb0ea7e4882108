"""The command's exit codes and the one error its commands raise; a leaf, importing nothing of
the command line, so that every command module and the entry point can share it.

Exit codes: 0 ok, 1 key not found, 2 usage or bad input, 3 storage error (the database failed,
or has no schema at this release's revision), 4 conflict (a compare-and-set found the snapshot
changed), 5 leased (another store holds a live lease on the key's prefix: stop that bot, or
``--force``), 130 interrupted.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_BROKEN_PIPE",
    "EXIT_CONFLICT",
    "EXIT_INTERRUPTED",
    "EXIT_LEASED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "FORCE_HINT",
    "PROG",
    "CommandError",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_BAD_INPUT = 2
EXIT_STORAGE = 3
EXIT_CONFLICT = 4
EXIT_LEASED = 5
"""Not 4: a conflict is cured by reading again and retrying, a live lease only by stopping its
holder (or ``--force``), so a script retrying on 4 must not spin on a running bot."""
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141

PROG = "rustrade-store"
FORCE_HINT = "nothing was written (--force writes under the lease anyway)"
"""The end of every refusal by a live lease."""


class CommandError(Exception):
    """A command's handled failure: one line for stderr and the exit code that goes with it.
    Commands raise it; only the entry point turns it into an exit."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
