"""The ``rustrade-store`` command's entry point: parse the command line, run the command's
handler, and turn what it raised into one line on stderr and an exit code.

Errors are one line on stderr; ``--debug`` adds the traceback. Results go to stdout,
confirmations and progress to stderr. The commands raise :class:`~.exits.CommandError` (or the
package's own errors); this module alone decides the exit.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import traceback
from typing import TYPE_CHECKING

from .._errors import (
    ClockSkewError,
    ConflictError,
    LeaseError,
    SchemaError,
    StorageError,
    StoreError,
)
from .exits import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_CONFLICT,
    EXIT_INTERRUPTED,
    EXIT_LEASED,
    EXIT_OK,
    EXIT_STORAGE,
    FORCE_HINT,
    PROG,
    CommandError,
)
from .parser import build_parser

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Coroutine, Sequence
    from typing import Any

    from .output import Console

__all__ = ["main"]


DRIVERS = frozenset({"aiosqlite", "asyncpg", "asyncmy"})
"""The database drivers a URL may need: one not installed is a configuration problem."""

CLOCK_AHEAD_HINT = (
    f"if the stored time is itself wrong (stamped by a clock that ran ahead), `{PROG} put KEY - "
    "--if-updated-at STORED --reset-time < value.json` writes the value back at the time now, "
    "after which saves and rm apply again"
)
"""The way out of a clock skew that syncing the clocks cannot cure: the bad time is in the data."""


def _handler(name: str) -> Callable[[argparse.Namespace, Console], Coroutine[Any, Any, int]]:
    """The function a ``module:function`` entry of the command table names."""
    module, function = name.split(":")
    found: Callable[[argparse.Namespace, Console], Coroutine[Any, Any, int]] = getattr(
        importlib.import_module(f"{__package__}.{module}"), function
    )
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (the console script exits with it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments == ["--version"]:  # answered before SQLAlchemy is imported: ~0.3 s sooner
        from .. import __version__

        sys.stdout.write(f"{PROG} {__version__}\n")
        return EXIT_OK
    import asyncio

    from .._engine import DEFAULT_TIMEOUT
    from .output import Console

    args = build_parser().parse_args(arguments)
    args.url = getattr(args, "url", None)
    args.timeout = getattr(args, "timeout", None) or DEFAULT_TIMEOUT
    debug = getattr(args, "debug", False)
    console = Console(sys.stdout, sys.stderr)
    try:
        code: int = asyncio.run(_handler(args.handler)(args, console))
        return code
    except SchemaError as exc:
        return _fail(console, EXIT_STORAGE, f"{exc}{_schema_hint(args)}", debug)
    except (CommandError, StoreError) as exc:
        return _fail(console, *_outcome(exc), debug)
    except ModuleNotFoundError as exc:
        if exc.name in DRIVERS:  # its message names the pip install
            return _fail(console, EXIT_BAD_INPUT, str(exc), debug)
        return _fail(console, EXIT_STORAGE, _unexpected(exc, debug), debug)
    except KeyboardInterrupt:
        said = (
            console.on_interrupt() if console.on_interrupt else "interrupted; nothing half-written"
        )
        return _fail(console, EXIT_INTERRUPTED, said, debug)
    except BrokenPipeError:
        # The reader went away (`ls | head`): stop quietly, as Unix tools do.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        return _fail(console, EXIT_STORAGE, _unexpected(exc, debug), debug)


def _unexpected(exc: Exception, debug: bool) -> str:
    hint = "" if debug else " (--debug shows the traceback)"
    return f"unexpected error: {type(exc).__name__}: {exc}{hint}"


def _schema_hint(args: argparse.Namespace) -> str:
    """The upgrade command that cures a schema error, for a command of one database."""
    if args.handler.startswith("moving:cmd_copy"):
        return ""
    import asyncio

    from .reaching import upgrade_hint

    return asyncio.run(upgrade_hint(args.url, args.timeout))


def _outcome(exc: CommandError | StoreError) -> tuple[int, str]:
    """The exit code and the line of a command's error, or of the package's."""
    if isinstance(exc, CommandError):
        return exc.code, str(exc)
    if isinstance(exc, ConflictError):
        return EXIT_CONFLICT, f"{exc} (`{PROG} get` shows what is stored)"
    if isinstance(exc, LeaseError):  # its message names the holder and what to do but --force
        return EXIT_LEASED, f"{exc}; {FORCE_HINT}"
    if isinstance(exc, ClockSkewError):
        return EXIT_STORAGE, f"{exc}; {CLOCK_AHEAD_HINT}"
    if isinstance(exc, StorageError):
        return EXIT_STORAGE, str(exc)
    return EXIT_BAD_INPUT, str(exc)  # every other error of the package is bad input


def _fail(console: Console, code: int, message: str, debug: bool) -> int:
    if debug:
        console.err.write(console.scrub(traceback.format_exc()))
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    console.say(f"{PROG}: {first}")
    return code
