"""What the command writes: results to stdout, everything else to stderr, through one
:class:`Console` that masks every password on the way out; and how values and keys look there."""

from __future__ import annotations

import difflib
import json
import re
import sys
import time
from typing import TYPE_CHECKING, TextIO

from .._engine import passwords
from ..codec import encode

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import URL

    from ..codec import JSONValue

__all__ = ["Console", "diff", "pretty", "shown_key", "size"]


class Console:
    """stdout for results, stderr for everything else; any password is masked on the way out."""

    __slots__ = ("_drawn", "_secrets", "err", "on_interrupt", "out")

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self._secrets: set[str] = set()
        self._drawn = False  # a progress line is on screen, not yet ended
        self.on_interrupt: Callable[[], str] | None = None
        """What an interrupt (Ctrl-C) left behind, for the command's last line."""

    def hide(self, url: URL) -> None:
        self._secrets.update(passwords(url))

    def scrub(self, text: str) -> str:
        # Whole words only: a password such as "postgres" must not garble "postgresql".
        for secret in self._secrets:
            text = re.sub(rf"(?<!\w){re.escape(secret)}(?!\w)", "***", text)
        return text

    def end_line(self) -> None:
        """End a progress line left on screen, so the next message starts a line of its own."""
        if self._drawn:
            self.err.write("\n")
            self._drawn = False

    def say(self, message: str) -> None:
        """A confirmation or a note, on stderr."""
        self.end_line()
        self.err.write(self.scrub(message) + "\n")
        self.err.flush()

    @property
    def interactive(self) -> bool:
        """Whether there is a person to ask: stdin and stderr are terminals."""
        return sys.stdin.isatty() and self.err.isatty()

    def progress(self, label: str, total: int | None) -> Callable[[int], None] | None:
        """A progress callback that redraws one stderr line, or None if stderr is no terminal."""
        if not self.err.isatty():
            return None
        last = 0.0

        def show(done: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last < 0.2 and done != total:
                return
            last = now
            of = f" of {total:,} ({100 * done / total:.0f}%)" if total else ""
            self.err.write(f"\r{label} {done:,}{of}")
            self._drawn = True
            self.err.flush()

        return show


def pretty(value: JSONValue) -> str:
    """A value as ``get`` and ``edit`` show it: indented JSON, one member a line."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def size(value: JSONValue, text: str | None = None) -> int:
    """Bytes of the stored JSON text (``text``, if already encoded)."""
    text = encode(value) if text is None else text
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def diff(before: str, after: str, old: str, new: str) -> str:
    """A unified diff of two texts, labelled ``old`` and ``new``."""
    return "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), old, new))


def shown_key(key: str) -> str:
    """A key as a person reads it in a listing: as it is, unless a space at either end or a
    character that prints as nothing (or as another) would make it look like another key; then
    in double quotes with those characters escaped. A key that starts with a quote is quoted
    too, so a quoted key never looks like a stored one."""
    if key.isprintable() and key == key.strip() and not key.startswith('"'):
        return key
    escaped = json.dumps(key, ensure_ascii=False)
    return "".join(
        char if char.isprintable() or char == " " else f"\\u{ord(char):04x}" for char in escaped
    )
