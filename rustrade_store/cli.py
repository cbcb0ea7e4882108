"""The ``rustrade-store`` command: migrate, inspect and repair state, move it between databases.

Exit codes: 0 ok, 1 key not found, 2 usage or bad input, 3 storage error (the database failed,
or has no schema at this release's revision), 4 conflict (a compare-and-set found the snapshot
changed), 5 leased (another store holds a live lease on the key's prefix: stop that bot, or
``--force``), 130 interrupted. Errors are one line on stderr; ``--debug`` adds the traceback.
Results go to stdout, confirmations and progress to stderr.

This module parses the command line and maps outcomes to exit codes; what each command does is
in :mod:`rustrade_store.commands`, imported only once a command runs, so that ``--version``
answers without loading SQLAlchemy.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any, NoReturn

from .errors import ConflictError, LeaseError, StorageError, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .commands import Console

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CONFLICT",
    "EXIT_INTERRUPTED",
    "EXIT_LEASED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_STORAGE",
    "FORCE_HINT",
    "Failure",
    "build_parser",
    "completion_script",
    "main",
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


class Failure(Exception):
    """A handled failure: one line for stderr and the exit code that goes with it."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other error of the command,
    and which names the nearest command to a mistyped one."""

    commands: Sequence[str] = ()

    def error(self, message: str) -> NoReturn:
        typed = re.search(r"invalid choice: '([^']*)'", message)
        if typed is not None and self.commands:
            near = difflib.get_close_matches(typed[1], self.commands, n=1)
            message = f"unknown command {typed[1]!r}: " + (
                f"did you mean {near[0]!r}?"
                if near
                else f"the commands are {', '.join(self.commands)}"
            )
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _timeout(text: str) -> float:
    """``--timeout``: seconds in the range the store accepts, else a usage error naming it."""
    from .engine import check_timeout

    try:
        return check_timeout(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- the parser ----------------------------------------------------------------------------

_EXAMPLES = {
    "upgrade": "rustrade-store --url postgresql://trader@db.internal/rustrade upgrade",
    "downgrade": "rustrade-store export backup.jsonl && rustrade-store downgrade base --yes",
    "current": "rustrade-store current",
    "doctor": "rustrade-store doctor --json | jq -r .status",
    "ls": "rustrade-store ls bot1/ --where '$.halted == true'",
    "get": "rustrade-store get bot1/BTCUSDT",
    "put": "rustrade-store put bot1/BTCUSDT - --if-updated-at 2026-11-26T12:22:53.277123+00:00"
    " < state.json",
    "edit": "EDITOR=nano rustrade-store edit bot1/BTCUSDT",
    "rm": "rustrade-store rm bot1/BTCUSDT --yes",
    "export": "rustrade-store export backup.jsonl --prefix bot1/",
    "import": "rustrade-store --url postgresql://trader@db.internal/rustrade import backup.jsonl",
    "copy": "rustrade-store copy --from sqlite:///rustrade_state.db --to postgresql://db/rustrade",
    "completion": "source <(rustrade-store completion bash)   # in ~/.bashrc",
    "leases": "rustrade-store leases --json | jq -c 'select(.live)'",
    "lease": "rustrade-store lease break bot1/ --yes",
}

_WHERE_HELP = """\
--where: a condition on the JSON value, e.g. '$.halted == true',
'$.loss_streak >= 3 and not $.halted', '$["day"] == "2026-11-26"'.
  condition  := term ("or" term)*      term := factor ("and" factor)*
  factor     := "not" factor | "(" condition ")" | path [operator literal]
  path       := "$" ("." name | "[" index "]" | "[" "string" "]")*
  operator   := == != < <= > >=        literal := JSON: "text", 1.5, true, false, null
A bare path holds when it exists and is neither false nor null; a comparison on a missing
path is false; < <= > >= compare two numbers or two strings.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command's parser; global options are accepted before or after the command."""
    from . import commands
    from .engine import DEFAULT_TIMEOUT, ENV_VAR

    epilog = (
        f"The database URL comes from --url, else ${ENV_VAR}, else ./rustrade_state.db.\n"
        "Plain URLs get the async drivers: sqlite:///bot.db, postgresql://user:pw@host/db.\n\n"
        "exit codes: 0 ok, 1 key not found, 2 usage or bad input, 3 storage error,\n"
        "4 conflict (changed since read), 5 leased (stop the bot, or --force), 130 interrupted\n"
    )
    common = _Parser(add_help=False)
    common.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"database URL (default: ${ENV_VAR})"
    )
    common.add_argument(
        "--timeout",
        type=_timeout,
        default=argparse.SUPPRESS,
        metavar="SECONDS",
        help=f"wait at most this long for a connection or a lock (default {DEFAULT_TIMEOUT:g})",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the traceback of an error",
    )
    parser = _Parser(
        prog=PROG,
        parents=[common],
        description="Look at, repair and move rustrade-store state.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    def add(
        name: str,
        handler: Callable[..., Any] | None,
        summary: str,
        more: str = "",
        under: argparse._SubParsersAction[_Parser] = subparsers,
        example: str = "",
    ) -> _Parser:
        sub = under.add_parser(
            name,
            parents=[common],
            help=summary,
            description=summary,
            epilog=f"{more}example:\n  {example or _EXAMPLES[name]}\n\n{epilog}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if handler is not None:
            sub.set_defaults(handler=handler)
        return sub

    force = "write under another store's live lease (stop that bot first: it would overwrite this)"

    sub = add("upgrade", commands.cmd_upgrade, "migrate the schema up (creates an SQLite file)")
    sub.add_argument("revision", nargs="?", default="head", metavar="REV", help="default: head")
    sub = add("downgrade", commands.cmd_downgrade, "migrate the schema down ('base' drops it)")
    sub.add_argument("revision", metavar="REV")
    sub.add_argument("--yes", action="store_true", help="go on even if snapshots may be dropped")
    add("current", commands.cmd_current, "show the schema revision against this release's head")
    sub = add("doctor", commands.cmd_doctor, "connect and report the database, schema, settings")
    sub.add_argument("--json", action="store_true", help="one JSON object, for monitoring")
    sub = add(
        "ls", commands.cmd_ls, "list keys with their updated_at and size, in key order", _WHERE_HELP
    )
    sub.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="literal prefix")
    shape = sub.add_mutually_exclusive_group()
    shape.add_argument("--keys", dest="keys_only", action="store_true", help="keys only")
    shape.add_argument("--json", action="store_true", help="JSON Lines: key, updated_at, size")
    sub.add_argument("--values", action="store_true", help="with --json: the value too")
    sub.add_argument("--where", metavar="CONDITION", help="only values meeting it (see below)")
    sub = add("get", commands.cmd_get, "print snapshots: one value as JSON, several as JSON Lines")
    sub.add_argument("keys", nargs="*", metavar="KEY")
    sub.add_argument("--prefix", metavar="P", help="every key starting with P, as JSON Lines")
    sub.add_argument("--json", action="store_true", help="JSON Lines even for one KEY")
    sub.add_argument("--compact", action="store_true", help="one value on one line")
    sub = add(
        "put", commands.cmd_put, "store a JSON value under KEY (strict JSON, '-' reads stdin)"
    )
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("json", metavar="JSON")
    condition = sub.add_mutually_exclusive_group()
    condition.add_argument(
        "--if-updated-at",
        metavar="TIME",
        help="only if KEY is still the snapshot saved at TIME (as ls prints it)",
    )
    condition.add_argument("--if-absent", action="store_true", help="only if KEY does not exist")
    sub.add_argument("--force", action="store_true", help=force)
    sub = add(
        "edit",
        commands.cmd_edit,
        "edit KEY's value in $VISUAL or $EDITOR; save it only if unchanged meanwhile",
    )
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("--yes", action="store_true", help="save without asking after the diff")
    sub.add_argument("--force", action="store_true", help=force)
    sub = add("rm", commands.cmd_rm, "remove KEY (asks first, or --yes)")
    sub.add_argument("key", metavar="KEY")
    sub.add_argument("--yes", action="store_true", help="remove without asking")
    sub.add_argument("--force", action="store_true", help=force)
    sub = add("export", commands.cmd_export, "write snapshots as JSON Lines to FILE or stdout")
    sub.add_argument("file", nargs="?", metavar="FILE")
    sub.add_argument("--prefix", default="", help="only keys starting with PREFIX")
    sub.add_argument("--yes", action="store_true", help="replace FILE if it exists")
    sub = add("import", commands.cmd_import, "write the snapshots of an export, all or none")
    sub.add_argument("file", metavar="FILE", help="'-' reads stdin")
    sub.add_argument("--dry-run", action="store_true", help="check every line, write nothing")
    sub.add_argument(
        "--overwrite",
        action="store_true",
        help="replace stored snapshots newer than the file's too (at a time past theirs)",
    )
    sub.add_argument(
        "--no-trailer-check",
        action="store_true",
        help="import a file without an export's last line (count and SHA-256), unchecked",
    )
    sub.add_argument("--force", action="store_true", help=force)
    sub = add("copy", commands.cmd_copy, "copy every snapshot to another database and verify it")
    sub.add_argument("--from", dest="source", required=True, metavar="URL")
    sub.add_argument("--to", dest="target", required=True, metavar="URL")
    sub.add_argument("--merge", action="store_true", help="into a target holding snapshots")
    sub.add_argument(
        "--overwrite", action="store_true", help="with --merge: the source wins even if older"
    )
    sub.add_argument("--force", action="store_true", help=f"into --to: {force}")
    sub = add(
        "leases",
        commands.cmd_leases,
        "list leases: prefix, token, live or expired, expiry, holder (host, pid, id, since)",
    )
    sub.add_argument("--json", action="store_true", help="JSON Lines, one lease a line")
    lease = add("lease", None, "act on a lease: `lease break PREFIX` ends a dead holder's lease")
    actions = lease.add_subparsers(
        dest="action", required=True, metavar="ACTION", parser_class=_Parser
    )
    sub = add(
        "break",
        commands.cmd_lease_break,
        "end the lease on PREFIX, for an operator who knows its holder is dead: the holder's "
        "writes are refused from then on, even if it comes back (asks first, or --yes)",
        under=actions,
        example=_EXAMPLES["lease"],
    )
    sub.add_argument("prefix", metavar="PREFIX", help="the leased prefix, such as bot1/")
    sub.add_argument("--yes", action="store_true", help="break it without asking")
    lease.commands = list(actions.choices)
    sub = add("completion", _cmd_completion, "print a shell completion script")
    sub.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")
    parser.commands = list(subparsers.choices)
    return parser


def _version() -> str:
    from . import __version__

    return __version__


# -- shell completion ----------------------------------------------------------------------

_KEY_COMMANDS = ("get", "put", "edit", "rm")
_FILE_COMMANDS = ("export", "import")


def completion_script(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    """A bash (or zsh, through bashcompinit) script completing commands, options, keys of the
    database (for get, put, edit, rm) and file names (for export, import)."""
    parser = parser or build_parser()
    commands: dict[str, list[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = [
                    inner
                    for item in sub._actions
                    if isinstance(item, argparse._SubParsersAction)
                    for inner in item.choices.values()
                ]
                commands[name] = sorted(
                    {
                        option
                        for parser_ in (sub, *nested)
                        for item in parser_._actions
                        for option in item.option_strings
                    }
                )
    globals_ = "--url --timeout --debug --version --help"
    cases = "\n".join(
        f'        {name}) options="{" ".join(options)}" ;;' for name, options in commands.items()
    )
    script = f"""\
# {PROG} completion for {shell}; load it with: source <({PROG} completion {shell})
_rustrade_store() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" command="" url="" options="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --url) url="${{COMP_WORDS[i + 1]}}"; ((i++)) ;;
            --timeout) ((i++)) ;;
            -*) ;;
            *) command="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z "$command" ]]; then
        COMPREPLY=($(compgen -W "{" ".join(commands)} {globals_}" -- "$cur"))
        return
    fi
    case "$command" in
{cases}
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
        return
    fi
    case "$command" in
        {"|".join(_KEY_COMMANDS)})
            local IFS=$'\\n'  # one key a line, spaces and all
            COMPREPLY=($({PROG} ${{url:+--url "$url"}} ls --keys -- "$cur" 2>/dev/null)) ;;
        {"|".join(_FILE_COMMANDS)})
            local IFS=$'\\n'
            COMPREPLY=($(compgen -f -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
        lease) COMPREPLY=($(compgen -W "break" -- "$cur")) ;;
    esac
}}
complete -o default -F _rustrade_store {PROG}
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


async def _cmd_completion(args: argparse.Namespace, console: Console) -> int:
    console.out.write(completion_script(args.shell))
    return EXIT_OK


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit code (the console script exits with it)."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments == ["--version"]:  # answered before SQLAlchemy is imported: ~0.3 s sooner
        sys.stdout.write(f"{PROG} {_version()}\n")
        return EXIT_OK
    import asyncio

    from .commands import Console

    args = build_parser().parse_args(arguments)
    args.url = getattr(args, "url", None)
    args.timeout = getattr(args, "timeout", None)
    if args.timeout is None:
        args.timeout = _default_timeout()
    debug = getattr(args, "debug", False)
    console = Console(sys.stdout, sys.stderr)
    try:
        code: int = asyncio.run(args.handler(args, console))
        return code
    except Failure as exc:
        return _fail(console, exc.code, str(exc), debug)
    except ConflictError as exc:
        return _fail(console, EXIT_CONFLICT, f"{exc} (`{PROG} get` shows what is stored)", debug)
    except LeaseError as exc:  # its message names the holder and what to do but --force
        return _fail(console, EXIT_LEASED, f"{exc}; {FORCE_HINT}", debug)
    except StorageError as exc:
        return _fail(console, EXIT_STORAGE, str(exc), debug)
    except StoreError as exc:  # every other error of the package is bad input
        return _fail(console, EXIT_BAD_INPUT, str(exc), debug)
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
        hint = "" if debug else " (--debug shows the traceback)"
        detail = f"unexpected error: {type(exc).__name__}: {exc}{hint}"
        return _fail(console, EXIT_STORAGE, detail, debug)


def _default_timeout() -> float:
    from .engine import DEFAULT_TIMEOUT

    return DEFAULT_TIMEOUT


def _fail(console: Console, code: int, message: str, debug: bool) -> int:
    if debug:
        console.err.write(console.scrub(traceback.format_exc()))
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    console.say(f"{PROG}: {first}")
    return code


if __name__ == "__main__":
    sys.exit(main())
