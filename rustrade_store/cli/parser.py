"""The command line's one table of commands, and what is built from it: the argument parser and
the shell completion scripts (argparse's public API only).

The table names each command's handler as ``module:function`` of this package, imported only
once the command runs, so that ``--version`` and ``--help`` load no database library.
"""

from __future__ import annotations

import argparse
import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from .exits import EXIT_BAD_INPUT, EXIT_OK, PROG

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .output import Console

__all__ = ["COMMANDS", "Argument", "Command", "build_parser", "completion_script"]


@dataclass(frozen=True, slots=True)
class Argument:
    """One argument of a command: its names and ``add_argument``'s keywords; arguments sharing
    a ``group`` exclude each other."""

    names: tuple[str, ...]
    settings: dict[str, Any]
    group: str | None = None


def _arg(*names: str, group: str | None = None, **settings: Any) -> Argument:
    return Argument(names, settings, group)


@dataclass(frozen=True, slots=True)
class Command:
    """One command: its handler (``module:function``), help, example, arguments, its own
    sub-commands, and what the completion script offers for its operands (``keys`` of the
    database, ``files``, or the words of its choices and sub-commands)."""

    name: str
    handler: str | None
    summary: str
    example: str
    arguments: tuple[Argument, ...] = ()
    more: str = ""
    actions: tuple[Command, ...] = ()
    completes: str = ""

    def options(self) -> list[str]:
        """Every option string it takes, its sub-commands' and the common ones included."""
        found = {"-h", "--help", *_COMMON_OPTIONS}
        for command in (self, *self.actions):
            for argument in command.arguments:
                found.update(name for name in argument.names if name.startswith("-"))
        return sorted(found)

    def words(self) -> list[str]:
        """The words its operand takes: its sub-commands, or the choices of its arguments."""
        if self.actions:
            return [action.name for action in self.actions]
        return [
            choice for argument in self.arguments for choice in argument.settings.get("choices", ())
        ]


_FORCE = "write under another store's live lease (stop that bot first: it would overwrite this)"

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

COMMANDS: tuple[Command, ...] = (
    Command(
        "upgrade",
        "schema:cmd_upgrade",
        "migrate the schema up (creates an SQLite file)",
        "rustrade-store --url postgresql://trader@db.internal/rustrade upgrade",
        (_arg("revision", nargs="?", default="head", metavar="REV", help="default: head"),),
    ),
    Command(
        "downgrade",
        "schema:cmd_downgrade",
        "migrate the schema down ('base' drops it)",
        "rustrade-store export backup.jsonl && rustrade-store downgrade base --yes",
        (
            _arg("revision", metavar="REV"),
            _arg("--yes", action="store_true", help="go on even if snapshots may be dropped"),
        ),
    ),
    Command(
        "current",
        "schema:cmd_current",
        "show the schema revision against this release's head",
        "rustrade-store current",
    ),
    Command(
        "doctor",
        "doctor:cmd_doctor",
        "connect and report the database, schema, settings",
        "rustrade-store doctor --json | jq -r .status",
        (_arg("--json", action="store_true", help="one JSON object, for monitoring"),),
    ),
    Command(
        "ls",
        "looking:cmd_ls",
        "list keys with their updated_at and size, in key order",
        "rustrade-store ls bot1/ --where '$.halted == true'",
        (
            _arg("prefix", nargs="?", default="", metavar="PREFIX", help="literal prefix"),
            _arg("--keys", group="shape", dest="keys_only", action="store_true", help="keys only"),
            _arg(
                "--json",
                group="shape",
                action="store_true",
                help="JSON Lines: key, updated_at, size",
            ),
            _arg("--values", action="store_true", help="with --json: the value too"),
            _arg("--where", metavar="CONDITION", help="only values meeting it (see below)"),
        ),
        _WHERE_HELP,
    ),
    Command(
        "get",
        "looking:cmd_get",
        "print snapshots: one value as JSON, several as JSON Lines",
        "rustrade-store get bot1/BTCUSDT",
        (
            _arg("keys", nargs="*", metavar="KEY"),
            _arg("--prefix", metavar="P", help="every key starting with P, as JSON Lines"),
            _arg("--json", action="store_true", help="JSON Lines even for one KEY"),
            _arg("--compact", action="store_true", help="one value on one line"),
        ),
        completes="keys",
    ),
    Command(
        "put",
        "changing:cmd_put",
        "store a JSON value under KEY (strict JSON, '-' reads stdin)",
        "rustrade-store put bot1/BTCUSDT - --if-updated-at 2026-11-26T12:22:53.277123+00:00"
        " < state.json",
        (
            _arg("key", metavar="KEY"),
            _arg("json", metavar="JSON"),
            _arg(
                "--if-updated-at",
                group="condition",
                metavar="TIME",
                help="only if KEY is still the snapshot saved at TIME (as ls prints it)",
            ),
            _arg(
                "--if-absent",
                group="condition",
                action="store_true",
                help="only if KEY does not exist",
            ),
            _arg(
                "--reset-time",
                action="store_true",
                help="with --if-updated-at: write at the time now even if TIME is later (a key "
                "stamped by a clock that ran ahead, which every save refuses)",
            ),
            _arg("--force", action="store_true", help=_FORCE),
        ),
        completes="keys",
    ),
    Command(
        "edit",
        "changing:cmd_edit",
        "edit KEY's value in $VISUAL or $EDITOR; save it only if unchanged meanwhile",
        "EDITOR=nano rustrade-store edit bot1/BTCUSDT",
        (
            _arg("key", metavar="KEY"),
            _arg("--yes", action="store_true", help="save without asking after the diff"),
            _arg("--force", action="store_true", help=_FORCE),
        ),
        completes="keys",
    ),
    Command(
        "rm",
        "changing:cmd_rm",
        "remove KEY (asks first, or --yes)",
        "rustrade-store rm bot1/BTCUSDT --yes",
        (
            _arg("key", metavar="KEY"),
            _arg("--yes", action="store_true", help="remove without asking"),
            _arg("--force", action="store_true", help=_FORCE),
        ),
        completes="keys",
    ),
    Command(
        "export",
        "moving:cmd_export",
        "write snapshots as JSON Lines to FILE or stdout",
        "rustrade-store export backup.jsonl --prefix bot1/",
        (
            _arg("file", nargs="?", metavar="FILE"),
            _arg("--prefix", default="", help="only keys starting with PREFIX"),
            _arg("--yes", action="store_true", help="replace FILE if it exists"),
        ),
        completes="files",
    ),
    Command(
        "import",
        "moving:cmd_import",
        "write the snapshots of an export, all or none",
        "rustrade-store --url postgresql://trader@db.internal/rustrade import backup.jsonl",
        (
            _arg("file", metavar="FILE", help="'-' reads stdin"),
            _arg("--dry-run", action="store_true", help="check every line, write nothing"),
            _arg(
                "--overwrite",
                action="store_true",
                help="replace stored snapshots newer than the file's too (at a time past theirs)",
            ),
            _arg(
                "--no-trailer-check",
                action="store_true",
                help="import a file without an export's last line (count and SHA-256), unchecked",
            ),
            _arg(
                "--allow-future-times",
                action="store_true",
                help="import times later than the database server's clock plus a minute (every "
                "save of such a key is refused until then)",
            ),
            _arg("--force", action="store_true", help=_FORCE),
        ),
        completes="files",
    ),
    Command(
        "copy",
        "moving:cmd_copy",
        "copy every snapshot to another database and verify it",
        "rustrade-store copy --from sqlite:///rustrade_state.db --to postgresql://db/rustrade",
        (
            _arg("--from", dest="source", required=True, metavar="URL"),
            _arg("--to", dest="target", required=True, metavar="URL"),
            _arg("--merge", action="store_true", help="into a target holding snapshots"),
            _arg(
                "--overwrite",
                action="store_true",
                help="with --merge: the source wins even if older",
            ),
            _arg("--force", action="store_true", help=f"into --to: {_FORCE}"),
        ),
    ),
    Command(
        "leases",
        "leases:cmd_leases",
        "list leases: prefix, token, live or expired, expiry, holder (host, pid, id, since)",
        "rustrade-store leases --json | jq -c 'select(.live)'",
        (_arg("--json", action="store_true", help="JSON Lines, one lease a line"),),
    ),
    Command(
        "lease",
        None,
        "act on a lease: `lease break PREFIX` ends a dead holder's lease",
        "rustrade-store lease break bot1/ --yes",
        actions=(
            Command(
                "break",
                "leases:cmd_lease_break",
                "end the lease on PREFIX, for an operator who knows its holder is dead: the "
                "holder's writes are refused from then on, even if it comes back (asks first, "
                "or --yes)",
                "rustrade-store lease break bot1/ --yes",
                (
                    _arg("prefix", metavar="PREFIX", help="the leased prefix, such as bot1/"),
                    _arg("--yes", action="store_true", help="break it without asking"),
                ),
            ),
        ),
    ),
    Command(
        "completion",
        "parser:cmd_completion",
        "print a shell completion script",
        "source <(rustrade-store completion bash)   # in ~/.bashrc",
        (_arg("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh"),),
    ),
)
"""Every command, in the order ``--help`` lists them."""

_COMMON_OPTIONS = ("--url", "--timeout", "--debug")


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
    from .._engine import check_timeout

    try:
        return check_timeout(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The command's parser, built from :data:`COMMANDS`; global options are accepted before
    or after the command."""
    from .._engine import DEFAULT_TIMEOUT, ENV_VAR

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
    _add_commands(parser, COMMANDS, "command", "COMMAND", common, epilog)
    return parser


def _add_commands(
    parent: _Parser,
    commands: Sequence[Command],
    dest: str,
    metavar: str,
    common: _Parser,
    epilog: str,
) -> None:
    under = parent.add_subparsers(dest=dest, required=True, metavar=metavar, parser_class=_Parser)
    parent.commands = [command.name for command in commands]
    for command in commands:
        sub = under.add_parser(
            command.name,
            parents=[common],
            help=command.summary,
            description=command.summary,
            epilog=f"{command.more}example:\n  {command.example}\n\n{epilog}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if command.handler is not None:
            sub.set_defaults(handler=command.handler)
        groups = {
            name: sub.add_mutually_exclusive_group()
            for name in dict.fromkeys(arg.group for arg in command.arguments if arg.group)
        }
        for argument in command.arguments:
            target = sub if argument.group is None else groups[argument.group]
            target.add_argument(*argument.names, **argument.settings)
        if command.actions:
            _add_commands(sub, command.actions, "action", "ACTION", common, epilog)


# -- shell completion ----------------------------------------------------------------------


def completion_script(shell: str) -> str:
    """A bash (or zsh, through bashcompinit) script completing commands, options, keys of the
    database (for get, put, edit, rm) and file names (for export, import)."""
    first = " ".join((*(command.name for command in COMMANDS), *_COMMON_OPTIONS))
    first += " --version --help"
    cases = "\n".join(
        f'        {command.name}) options="{" ".join(command.options())}" ;;'
        for command in COMMANDS
    )
    keys = "|".join(command.name for command in COMMANDS if command.completes == "keys")
    files = "|".join(command.name for command in COMMANDS if command.completes == "files")
    words = "".join(
        f'\n        {command.name}) COMPREPLY=($(compgen -W "{" ".join(command.words())}" '
        '-- "$cur")) ;;'
        for command in COMMANDS
        if command.words()
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
        COMPREPLY=($(compgen -W "{first}" -- "$cur"))
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
        {keys})
            local IFS=$'\\n'  # one key a line, spaces and all
            COMPREPLY=($({PROG} ${{url:+--url "$url"}} ls --keys -- "$cur" 2>/dev/null)) ;;
        {files})
            local IFS=$'\\n'
            COMPREPLY=($(compgen -f -- "$cur")) ;;{words}
    esac
}}
complete -o default -F _rustrade_store {PROG}
"""
    if shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    return script


async def cmd_completion(args: argparse.Namespace, console: Console) -> int:
    console.out.write(completion_script(args.shell))
    return EXIT_OK
