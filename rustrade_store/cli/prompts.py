"""Asking the person at the terminal: confirmations, and the editor ``edit`` opens on a
temporary file."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .exits import EXIT_BAD_INPUT, CommandError

if TYPE_CHECKING:
    from .output import Console

__all__ = ["EditFile", "ask", "confirm", "run_editor"]


def ask(console: Console, question: str) -> bool:
    """Ask on stderr, read the answer from stdin; only y or yes is yes."""
    console.end_line()
    console.err.write(console.scrub(f"{question} [y/N] "))
    console.err.flush()
    # Ctrl-C at the prompt must stop the command now, not after the next Enter.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        answer = sys.stdin.readline()
    finally:
        signal.signal(signal.SIGINT, previous)
    return answer.strip().lower() in ("y", "yes")


def confirm(console: Console, question: str, *, yes: bool, refusal: str) -> None:
    """Go on with ``--yes``, or when the person at the terminal answers yes; else stop with exit
    code 2 (``refusal`` says what would have happened)."""
    if yes:
        return
    if not console.interactive:
        raise CommandError(
            EXIT_BAD_INPUT, f"{refusal}: add --yes to confirm (no terminal to ask on)"
        )
    if not ask(console, question):
        raise CommandError(EXIT_BAD_INPUT, "not confirmed; nothing was changed")


class EditFile:
    """The temporary file ``edit`` opens in the editor; kept, and named, when the edit is not
    saved, so that no typing is lost."""

    __slots__ = ("path",)

    def __init__(self, key: str, text: str) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:40]
        handle, name = tempfile.mkstemp(prefix=f"rustrade-store-{safe}-", suffix=".json")
        self.path = Path(name)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)

    def read(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


async def run_editor(path: Path) -> None:
    """Open ``path`` in $VISUAL, else $EDITOR, else vi, through the shell as git does (so an
    editor given with arguments works); Ctrl-C belongs to the editor meanwhile."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    # A Python handler (unlike SIG_IGN) is reset to the default in the editor's process.
    previous = signal.signal(signal.SIGINT, lambda _signal, _frame: None)
    try:
        process = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", f'{editor} "$@"', editor, str(path)
        )
        code = await process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if code != 0:
        raise CommandError(
            EXIT_BAD_INPUT,
            f"the editor {editor!r} exited with status {code}; nothing was written"
            + (" (not found? set VISUAL or EDITOR)" if code == 127 else ""),
        )
