"""``import`` and ``copy --merge`` never silently replace newer state, and say what they did;
``--overwrite`` forces, at a time past the stored one; a cut-short export is refused."""

from __future__ import annotations

import asyncio
import io
import json
import sys
from datetime import timedelta
from typing import TYPE_CHECKING

from rustrade_store import Snapshot, SqlStore
from rustrade_store.cli import main
from rustrade_store.engine import resolve_url
from rustrade_store.transfer import ExportWriter

from .test_cli import T0, cli, copy_cli, ok, one_line_error

if TYPE_CHECKING:
    from pathlib import Path

    import pytest
    from sqlalchemy import URL

LATER = T0 + timedelta(hours=1)


def export_file(path: Path, items: list[Snapshot]) -> None:
    with path.open("wb") as out:
        writer = ExportWriter(out)
        writer.write(items)
        writer.close()


async def _seed(url: URL, items: list[Snapshot]) -> None:
    async with SqlStore.from_url(url) as store:
        await store.restore(items)


async def _read(url: URL) -> dict[str, Snapshot]:
    async with SqlStore.from_url(url) as store:
        return {snapshot.key: snapshot async for snapshot in store.snapshots()}


def stored(url: URL) -> dict[str, Snapshot]:
    return asyncio.run(_read(url))


# The database and the file disagree in every way a restore can meet:
#   added: only in the file; replaced: older in the database; unchanged: the same;
#   newer: the database's is newer (a bot halted today, a backup from yesterday);
#   conflicting: the same time, another value.
IN_DATABASE = [
    Snapshot("replaced", {"halted": False}, T0),
    Snapshot("unchanged", {"halted": False}, T0),
    Snapshot("newer", {"halted": True}, LATER),
    Snapshot("conflicting", {"halted": True}, T0),
]
IN_FILE = [
    Snapshot("added", {"halted": False}, T0),
    Snapshot("replaced", {"halted": True}, LATER),
    Snapshot("unchanged", {"halted": False}, T0),
    Snapshot("newer", {"halted": False}, T0),
    Snapshot("conflicting", {"halted": False}, T0),
]


def test_import_keeps_newer_state_and_counts_what_it_found(sqlite_url: URL, tmp_path: Path) -> None:
    asyncio.run(_seed(sqlite_url, IN_DATABASE))
    export_file(tmp_path / "yesterday.jsonl", IN_FILE)

    run = ok(cli("import", "yesterday.jsonl", url=sqlite_url, cwd=tmp_path))
    assert (
        "1 added, 1 replaced (older there), 1 unchanged, 1 kept (newer there), "
        "1 kept (same time, another value there)"
    ) in run.err
    assert "2 snapshot(s) in the database are newer" in run.err
    assert "--overwrite" in run.err
    after = stored(sqlite_url)
    assert after["newer"] == IN_DATABASE[2]  # the halt of today survives yesterday's backup
    assert after["conflicting"] == IN_DATABASE[3]
    assert after["replaced"] == IN_FILE[1]
    assert after["added"] == IN_FILE[0]

    forced = ok(cli("import", "--overwrite", "yesterday.jsonl", url=sqlite_url, cwd=tmp_path))
    assert (
        "0 added, 0 replaced (older there), 3 unchanged, 1 overwritten (newer there), "
        "1 overwritten (same time, another value there)"
    ) in forced.err
    now = stored(sqlite_url)
    for key in ("newer", "conflicting"):
        assert now[key].value == {"halted": False}
        # Written at a time past the stored one, never back to the file's.
        assert now[key].updated_at > after[key].updated_at


def test_a_cut_short_or_changed_export_is_refused(sqlite_url: URL, tmp_path: Path) -> None:
    items = [Snapshot(f"bot1/S{i:04d}", {"i": i}, T0) for i in range(2500)]
    export_file(tmp_path / "whole.jsonl", items)
    whole = (tmp_path / "whole.jsonl").read_bytes().splitlines(keepends=True)
    trailer = json.loads(whole[-1])["rustrade_store_export"]
    assert trailer["count"] == 2500

    variants = {
        # `export > file` killed after 2,000 lines: whole lines, no trailer.
        "cut.jsonl": (b"".join(whole[:2000]), "no export trailer"),
        "changed.jsonl": (
            b"".join([whole[0].replace(b'"i":0', b'"i":1'), *whole[1:]]),
            "SHA-256 differs",
        ),
        "short.jsonl": (b"".join(whole[1:]), "counts 2,500 snapshot(s) but the file holds 2,499"),
        "joined.jsonl": (b"".join(whole + whole), "trailer before the end"),
    }
    for name, (data, words) in variants.items():
        (tmp_path / name).write_bytes(data)
        refused = cli("import", "--dry-run", name, cwd=tmp_path)
        assert refused.code == 2, refused
        assert words in refused.err, refused
        assert "nothing was imported" in refused.err.splitlines()[-1]
    one_line_error(cli("import", "cut.jsonl", url=sqlite_url, cwd=tmp_path), 2, "trailer")
    assert stored(sqlite_url) == {}  # two batches were written, then rolled back
    one_line_error(cli("import", "-", stdin="", url=sqlite_url, cwd=tmp_path), 2, "stdin: empty")

    # Told so, the cut file imports as it is (a file made before exports had a trailer).
    ok(cli("import", "--no-trailer-check", "cut.jsonl", url=sqlite_url, cwd=tmp_path))
    assert len(stored(sqlite_url)) == 2000


def test_export_shows_progress_only_on_a_terminal(
    sqlite_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    asyncio.run(_seed(sqlite_url, [Snapshot(f"k{i:05d}", i, T0) for i in range(2500)]))
    piped = ok(cli("export", "piped.jsonl", url=sqlite_url, cwd=tmp_path))
    assert "\r" not in piped.err
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    url = sqlite_url.render_as_string(hide_password=False)
    assert main(["--url", url, "export", str(tmp_path / "seen.jsonl")]) == 0
    assert "\rexported 2,500 of 2,500 (100%)\nexported 2,500 snapshot(s)" in err.getvalue()
    assert (tmp_path / "seen.jsonl").read_bytes() == (tmp_path / "piped.jsonl").read_bytes()


def test_copy_merge_keeps_the_newer_side_and_overwrite_makes_the_source_win(
    sqlite_url: URL, tmp_path: Path
) -> None:
    """A merge used to fail its own verification (exit 3) when the target kept a newer row."""
    source = resolve_url(f"sqlite:///{tmp_path / 'source.db'}")
    ok(cli("upgrade", url=source, cwd=tmp_path))
    asyncio.run(_seed(source, IN_FILE))
    asyncio.run(_seed(sqlite_url, [*IN_DATABASE, Snapshot("target-only", 1, T0)]))

    merged = ok(copy_cli(source, sqlite_url, "--merge", cwd=tmp_path))
    assert "merged 5 snapshot(s)" in merged.err
    assert (
        "1 added, 1 replaced (older in the target), 1 unchanged, 1 kept (newer in the target), "
        "1 kept (same time, another value in the target); verified"
    ) in merged.err
    after = stored(sqlite_url)
    assert after["newer"] == IN_DATABASE[2]
    assert after["conflicting"] == IN_DATABASE[3]
    assert after["target-only"].value == 1

    refused = copy_cli(source, sqlite_url, "--overwrite", cwd=tmp_path)
    one_line_error(refused, 2, "--overwrite applies to a merge")
    forced = ok(copy_cli(source, sqlite_url, "--merge", "--overwrite", cwd=tmp_path))
    assert "1 overwritten (newer in the target)" in forced.err
    assert "the source's replaced the target's" in forced.err
    now = stored(sqlite_url)
    for key in ("newer", "conflicting"):
        assert now[key].value == {"halted": False}
        assert now[key].updated_at > after[key].updated_at
