"""``rustrade_store.transfer`` in process: the line format, export and its trailer, import's
checks and counts, copy and its verification (plain and ``merge``). The commands around them
are tested as subprocesses in ``test_cli*.py``."""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from rustrade_store import (
    InMemoryStore,
    InvalidValueError,
    RestoreReport,
    Snapshot,
    SqlStore,
    resolve_url,
    upgrade,
)
from rustrade_store._errors import BadFileError, CopyMismatchError, TargetNotEmptyError
from rustrade_store._lines import (
    TRAILER,
    format_line,
    format_time,
    parse_json,
    parse_time,
    read_line,
)
from rustrade_store.codec import BATCH_ROWS
from rustrade_store.testing import EXACT_VALUES, assert_same_json
from rustrade_store.transfer import ExportWriter, copy, export, import_lines, verify

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
    from pathlib import Path

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
LATER = T0 + timedelta(hours=1)


def export_bytes(items: list[Snapshot]) -> bytes:
    """The file :func:`export` would write for ``items``: their lines, then the trailer."""
    out = io.BytesIO()
    writer = ExportWriter(out)
    writer.write(items)
    writer.close()
    return out.getvalue()


def snapshot_of(line: bytes) -> Snapshot:
    """The snapshot a line of an export holds."""
    found = read_line(line)
    assert isinstance(found, Snapshot), found
    return found


def many(count: int, prefix: str = "bot/") -> list[Snapshot]:
    return [Snapshot(f"{prefix}S{i:05d}", {"i": i}, T0) for i in range(count)]


async def stored(store: SqlStore) -> dict[str, Snapshot]:
    return {snapshot.key: snapshot async for snapshot in store.snapshots()}


class Bad:
    """Collects what ``on_bad`` hears: (line number, reason)."""

    __slots__ = ("lines",)

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, number: int, reason: str) -> None:
        self.lines.append((number, reason))

    @property
    def numbers(self) -> list[int]:
        return [number for number, _ in self.lines]


@pytest.fixture
async def source() -> AsyncIterator[SqlStore]:
    async with InMemoryStore() as store:
        yield store


@pytest.fixture
async def target() -> AsyncIterator[SqlStore]:
    async with InMemoryStore() as store:
        yield store


# -- one line, one snapshot ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXACT_VALUES))
def test_a_line_round_trips_every_exact_value(name: str) -> None:
    snapshot = Snapshot(f"k/{name}", EXACT_VALUES[name], T0)
    line = format_line(snapshot)
    assert line.endswith("}\n")
    assert line.count("\n") == 1
    parsed = snapshot_of(line.encode("utf-8"))
    assert parsed.key == snapshot.key
    assert parsed.updated_at == T0
    assert_same_json(parsed.value, snapshot.value)
    assert format_line(parsed) == line


def test_a_line_is_compact_utf8_with_the_time_in_utc() -> None:
    paris = timezone(timedelta(hours=2))
    line = format_line(
        Snapshot("bot/ключ", {"a": [1, 2.5]}, datetime(2026, 7, 1, 14, tzinfo=paris))
    )
    assert line == (
        '{"key":"bot/ключ","value":{"a":[1,2.5]},"updated_at":"2026-07-01T12:00:00.000000+00:00"}\n'
    )
    assert format_time(T0) == "2026-03-04T05:06:07.123456+00:00"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"\xff\n", "not UTF-8"),
        (b"[1]", "must be a JSON object"),
        (b'{"key":"k","value":NaN,"updated_at":"2026-01-01T00:00:00Z"}', "NaN"),
        (b'{"key":"k","value":1e400,"updated_at":"2026-01-01T00:00:00Z"}', "out of the range"),
        (b'{"key":"k","key":"j","value":1,"updated_at":"2026-01-01T00:00:00Z"}', "twice"),
        (b'{"key":1,"value":1,"updated_at":"2026-01-01T00:00:00Z"}', "must be a str"),
        (b'{"key":"k","value":"\\ud800","updated_at":"2026-01-01T00:00:00Z"}', "surrogate"),
        (b'{"key":"k","value":1,"updated_at":"yesterday"}', "not ISO 8601"),
        (b'{"key":"k","value":1,"updated_at":20260101}', "ISO 8601 string"),
        (b'{"value":1}', "missing key, updated_at"),
        (b'{"key":"k","value":1,"updated_at":"2026-01-01T00:00:00Z","x":0}', 'unexpected "x"'),
        (b'{"key":"k","value":1,"updated_at":"2026-01-01T00:00:00"}', "no time zone"),
    ],
)
def test_bad_lines_are_named(line: bytes, words: str) -> None:
    with pytest.raises(InvalidValueError, match=words):
        read_line(line)


def test_parse_time_takes_iso_8601_with_a_zone_and_gives_utc() -> None:
    assert parse_time("2026-03-04T06:06:07.123456+01:00") == T0
    assert parse_time("2026-03-04T05:06:07.123456Z") == T0
    assert parse_time("2026-03-04T05:06:07.123456Z").tzinfo is UTC
    with pytest.raises(InvalidValueError, match=r"has no time zone \(add \+00:00 for UTC\)"):
        parse_time("2026-03-04T05:06:07")
    with pytest.raises(InvalidValueError, match="is not ISO 8601"):
        parse_time("04/03/2026")
    with pytest.raises(InvalidValueError, match="out of range once converted to UTC"):
        parse_time("0001-01-01T00:00:00+01:00")


def test_parse_json_is_strict() -> None:
    assert parse_json(' {"a": [1, 2.5, "x", null, true]} ') == {"a": [1, 2.5, "x", None, True]}
    for bad in ("NaN", "Infinity", "-Infinity", "[1e999]", '{"a":1,"a":1}', "", "[1,]", "'x'"):
        with pytest.raises(ValueError, match="not valid JSON"):
            parse_json(bad)
    with pytest.raises(InvalidValueError, match=re.escape("""must be quoted: '"halted"'""")):
        parse_json("halted")


# -- export --------------------------------------------------------------------------------


async def test_export_writes_the_prefix_in_key_order_then_its_trailer(source: SqlStore) -> None:
    items = [*many(3), Snapshot("other/k", 1, T0), Snapshot("bot/A", None, LATER)]
    await source.restore(items)
    out = io.BytesIO()
    assert await export(source, out, "bot/") == 4
    *lines, last = out.getvalue().splitlines(keepends=True)
    assert [snapshot_of(line).key for line in lines] == [
        "bot/A",
        "bot/S00000",
        "bot/S00001",
        "bot/S00002",
    ]
    assert lines[0] == format_line(items[-1]).encode()
    # The trailer is what `head -n -1 FILE | sha256sum` recomputes.
    digest = hashlib.sha256(b"".join(lines)).hexdigest()
    assert json.loads(last) == {TRAILER: {"count": 4, "sha256": digest}}
    assert last == b'{"rustrade_store_export":{"count":4,"sha256":"' + digest.encode() + b'"}}\n'


async def test_export_reports_progress_a_batch_at_a_time(source: SqlStore) -> None:
    await source.restore(many(2 * BATCH_ROWS + 500))
    done: list[int] = []
    out = io.BytesIO()
    assert await export(source, out, on_batch=done.append) == 2500
    assert done == [1000, 2000, 2500]
    assert out.getvalue() == export_bytes(many(2500))


async def test_an_empty_store_exports_a_trailer_that_imports(
    source: SqlStore, target: SqlStore
) -> None:
    out = io.BytesIO()
    assert await export(source, out) == 0
    empty_sha = hashlib.sha256(b"").hexdigest()
    assert json.loads(out.getvalue()) == {TRAILER: {"count": 0, "sha256": empty_sha}}
    counts = await import_lines(target, io.BytesIO(out.getvalue()), Bad())
    assert (counts.snapshots, counts.bad_lines, counts.problem) == (0, 0, None)
    assert counts.report.state == "committed"


async def test_export_then_import_gives_the_same_file(store: SqlStore) -> None:
    """Each backend's export, imported into another store, exports to the same bytes."""
    items = [Snapshot(f"exact/{name}", value, T0) for name, value in EXACT_VALUES.items()]
    await store.restore([*items, Snapshot("later/k", [1], LATER)])
    first = io.BytesIO()
    await export(store, first)
    async with InMemoryStore() as other:
        counts = await import_lines(other, io.BytesIO(first.getvalue()), Bad())
        assert counts.snapshots == len(items) + 1
        assert counts.report.added == len(items) + 1
        second = io.BytesIO()
        await export(other, second)
    assert second.getvalue() == first.getvalue()


# -- import --------------------------------------------------------------------------------


async def test_import_writes_every_line_and_counts_them(target: SqlStore) -> None:
    items = many(2 * BATCH_ROWS + 500)
    done: list[int] = []
    report = RestoreReport()
    counts = await import_lines(
        target, io.BytesIO(export_bytes(items)), Bad(), done.append, report=report
    )
    assert counts.report is report
    assert (counts.snapshots, counts.bad_lines, counts.problem) == (2500, 0, None)
    assert (report.added, report.total, report.state) == (2500, 2500, "committed")
    assert done == [1000, 2000, 2500]
    assert list((await stored(target)).values()) == items


async def test_a_key_given_twice_ends_with_its_last_line(target: SqlStore) -> None:
    lines = [Snapshot("k", "first", T0), Snapshot("j", 0, T0), Snapshot("k", "last", T0)]
    counts = await import_lines(target, io.BytesIO(export_bytes(lines)), Bad())
    assert counts.snapshots == 3
    assert counts.report.total == 2
    assert await target.load("k") == "last"


async def test_a_key_given_twice_keeps_the_later_updated_at(target: SqlStore) -> None:
    """Not the last line: the later time, in one batch or in two (docs/operations.md)."""
    filler = [Snapshot(f"f{i:05d}", i, T0) for i in range(BATCH_ROWS)]
    lines = [
        Snapshot("k", "later", T0 + timedelta(seconds=1)),
        Snapshot("k", "earlier", T0),
        Snapshot("a", "later", T0 + timedelta(seconds=1)),
        *filler,
        Snapshot("a", "earlier", T0),
    ]
    await import_lines(target, io.BytesIO(export_bytes(lines)), Bad())
    assert await target.load_many(["k", "a"]) == {"k": "later", "a": "later"}


@pytest.mark.parametrize("apart", [False, True], ids=["one batch", "two batches"])
async def test_a_key_given_twice_with_overwrite_keeps_the_later_updated_at(
    target: SqlStore, apart: bool
) -> None:
    """With ``overwrite`` too, the later time wins, in one batch or in two batches of 1,000:
    overwrite forces the file over what was stored before the import, not over the file's own
    lines (docs/operations.md)."""
    filler = many(BATCH_ROWS) if apart else []
    lines = [Snapshot("k", "later", LATER), *filler, Snapshot("k", "last line", T0)]
    await import_lines(target, io.BytesIO(export_bytes(lines)), Bad(), overwrite=True)
    assert await target.load_snapshot("k") == Snapshot("k", "later", LATER)


async def test_import_keeps_newer_state_unless_told_to_overwrite(target: SqlStore) -> None:
    await target.restore(
        [
            Snapshot("replaced", "old", T0),
            Snapshot("unchanged", "same", T0),
            Snapshot("newer", "halted today", LATER),
            Snapshot("conflicting", "mine", T0),
        ]
    )
    file = export_bytes(
        [
            Snapshot("added", "new", T0),
            Snapshot("replaced", "new", LATER),
            Snapshot("unchanged", "same", T0),
            Snapshot("newer", "yesterday", T0),
            Snapshot("conflicting", "theirs", T0),
        ]
    )
    kept = (await import_lines(target, io.BytesIO(file), Bad())).report
    assert (kept.added, kept.replaced, kept.unchanged) == (1, 1, 1)
    assert (kept.newer, kept.conflicting, kept.overwritten) == (1, 1, 0)
    after = await stored(target)
    assert (after["newer"].value, after["conflicting"].value) == ("halted today", "mine")
    assert (after["replaced"].value, after["added"].value) == ("new", "new")

    forced = (await import_lines(target, io.BytesIO(file), Bad(), overwrite=True)).report
    assert (forced.newer, forced.conflicting, forced.overwritten) == (1, 1, 2)
    now = await stored(target)
    assert (now["newer"].value, now["conflicting"].value) == ("yesterday", "theirs")
    for key in ("newer", "conflicting"):  # written past the stored time, never back to the file's
        assert now[key].updated_at > after[key].updated_at


async def test_bad_lines_are_reported_by_number_and_nothing_is_written(target: SqlStore) -> None:
    """Every line is checked, each bad one is reported with its line number (blank lines
    counted, as an editor counts them), and nothing is written, not even the batches that
    went in before the first bad line."""
    await target.save("kept", "old")
    good = export_bytes(many(2 * BATCH_ROWS + 1)).splitlines(keepends=True)[:-1]
    lines = [
        *good,  # lines 1 to 2001: two batches written inside the transaction
        b"not json\n",  # 2002
        b"\n",  # 2003, blank: skipped, but counted
        b'{"key":"x","value":1}\n',  # 2004
        format_line(Snapshot("late", 1, T0)).encode(),  # 2005, good, but not written either
        b'{"rustrade_store_export":{"count":1}}\n',  # 2006, a malformed trailer
    ]
    bad = Bad()
    report = RestoreReport()
    with pytest.raises(BadFileError, match=r"^3 bad line\(s\); .*nothing was imported$"):
        await import_lines(target, io.BytesIO(b"".join(lines)), bad, report=report)
    assert bad.numbers == [2002, 2004, 2006]
    assert "not valid JSON" in bad.lines[0][1]
    assert "missing updated_at" in bad.lines[1][1]
    assert "malformed export trailer" in bad.lines[2][1]
    assert report.state == "rolled back"
    assert {key: s.value for key, s in (await stored(target)).items()} == {"kept": "old"}

    # Without a store (a dry run) the same lines are found.
    dry = Bad()
    with pytest.raises(BadFileError, match="3 bad line"):
        await import_lines(None, io.BytesIO(b"".join(lines)), dry)
    assert dry.lines == bad.lines


async def test_a_bom_on_the_first_line_is_ignored_and_the_digest_covers_it(
    target: SqlStore,
) -> None:
    """An export saved by an editor that adds a BOM: the lines still parse, and the digest,
    taken over the bytes as they are, tells the file changed."""
    file = export_bytes(many(2))
    bad = Bad()
    with pytest.raises(BadFileError, match="SHA-256 differs"):
        await import_lines(None, io.BytesIO(b"\xef\xbb\xbf" + file), bad)
    assert bad.lines == []
    counts = await import_lines(
        target, io.BytesIO(b"\xef\xbb\xbf" + file), bad, check_trailer=False
    )
    assert (counts.snapshots, counts.report.added) == (2, 2)


async def test_the_trailer_guards_the_file_as_a_whole(target: SqlStore) -> None:
    items = many(3)
    *lines, trailer = export_bytes(items).splitlines(keepends=True)
    whole = b"".join([*lines, trailer])
    changed = lines[1].replace(b'"i":1', b'"i":7')
    variants = {
        b"".join(lines): "no export trailer at its end, so it may be cut short",
        b"".join([lines[0], lines[2], trailer]): (
            "the export trailer on line 3 counts 3 snapshot(s) but the file holds 2"
        ),
        b"".join([lines[0], changed, lines[2], trailer]): (
            "the file's SHA-256 differs from the export trailer's on line 4"
        ),
        b"".join([*lines[:2], b"\n", lines[2], trailer]): "SHA-256 differs",  # a blank line added
        b"": "empty (not even an export trailer)",
    }
    for data, words in variants.items():
        for store in (None, target):
            with pytest.raises(BadFileError, match=re.escape(words)):
                await import_lines(store, io.BytesIO(data), Bad())
    assert await target.count() == 0
    with pytest.raises(BadFileError, match="empty"):  # checked with or without the trailer
        await import_lines(target, io.BytesIO(b""), Bad(), check_trailer=False)

    # Told not to check, a file without a trailer (made by hand, or before trailers) imports.
    cut = await import_lines(target, io.BytesIO(b"".join(lines[:2])), Bad(), check_trailer=False)
    assert (cut.snapshots, cut.report.added) == (2, 2)

    # Blank lines after the trailer change nothing.
    counts = await import_lines(target, io.BytesIO(whole + b"\n\n"), Bad())
    assert (counts.snapshots, counts.problem) == (3, None)
    assert (counts.report.added, counts.report.unchanged) == (1, 2)


async def test_exports_joined_together_are_refused_at_the_inner_trailer(target: SqlStore) -> None:
    first = export_bytes(many(2, "a/"))
    second = export_bytes(many(3, "b/"))
    bad = Bad()
    with pytest.raises(BadFileError, match=r"1 bad line\(s\)"):
        await import_lines(target, io.BytesIO(first + second), bad)
    assert bad.numbers == [3]
    assert "trailer before the end of the file" in bad.lines[0][1]
    assert await target.count() == 0

    counts = await import_lines(target, io.BytesIO(first + second), bad, check_trailer=False)
    assert (counts.snapshots, await target.count()) == (5, 5)


# -- copy and verify -----------------------------------------------------------------------


class BotWritesDuringCopy(InMemoryStore):
    """A target on which a bot writes once the copy's transaction has committed, before the
    copy reads both stores back to verify them."""

    __slots__ = ("bot",)

    def __init__(self, bot: Callable[[SqlStore], Awaitable[object]]) -> None:
        super().__init__()
        self.bot = bot

    async def restore_stream(
        self,
        batches: AsyncIterable[Iterable[Snapshot]],
        *,
        overwrite: bool = False,
        report: RestoreReport | None = None,
    ) -> RestoreReport:
        done = await super().restore_stream(batches, overwrite=overwrite, report=report)
        await self.bot(self)
        return done


IN_TARGET = [
    Snapshot("replaced", {"halted": False}, T0),
    Snapshot("unchanged", {"halted": False}, T0),
    Snapshot("newer", {"halted": True}, LATER),
    Snapshot("conflicting", {"halted": True}, T0),
    Snapshot("target-only", 1, T0),
]
IN_SOURCE = [
    Snapshot("added", {"halted": False}, T0),
    Snapshot("replaced", {"halted": True}, LATER),
    Snapshot("unchanged", {"halted": False}, T0),
    Snapshot("newer", {"halted": False}, T0),
    Snapshot("conflicting", {"halted": False}, T0),
]


async def test_copy_writes_everything_and_verifies_it(source: SqlStore, target: SqlStore) -> None:
    items = [Snapshot(f"exact/{name}", value, T0) for name, value in EXACT_VALUES.items()]
    items += many(2 * BATCH_ROWS + 500)
    await source.restore(items)
    done: list[int] = []
    report = await copy(source, target, on_batch=done.append)
    assert (report.added, report.total, report.state) == (len(items), len(items), "committed")
    assert done == [1000, 2000, len(items)]
    assert await stored(target) == await stored(source)
    assert await verify(source, target) == len(items)


async def test_copy_refuses_a_target_that_holds_snapshots(
    source: SqlStore, target: SqlStore
) -> None:
    await source.restore(many(2))
    await target.save("there", 1)
    with pytest.raises(TargetNotEmptyError, match=r"already holds 1 snapshot\(s\).*--merge"):
        await copy(source, target)
    with pytest.raises(ValueError, match="overwrite applies to a merge only"):
        await copy(source, target, overwrite=True)
    assert list(await stored(target)) == ["there"]


async def test_copy_merge_keeps_the_newer_side_and_verifies_the_counts(
    source: SqlStore, target: SqlStore
) -> None:
    await source.restore(IN_SOURCE)
    await target.restore(IN_TARGET)
    report = await copy(source, target, merge=True)
    assert (report.added, report.replaced, report.unchanged) == (1, 1, 1)
    assert (report.newer, report.conflicting, report.overwritten) == (1, 1, 0)
    after = await stored(target)
    assert after["newer"] == IN_TARGET[2]  # the halt of today survives yesterday's state
    assert after["conflicting"] == IN_TARGET[3]
    assert after["replaced"] == IN_SOURCE[1]
    assert after["added"] == IN_SOURCE[0]
    assert after["target-only"] == IN_TARGET[4]  # the target's other keys stay


async def test_copy_merge_overwrite_makes_the_source_win_later(
    source: SqlStore, target: SqlStore
) -> None:
    await source.restore(IN_SOURCE)
    await target.restore(IN_TARGET)
    report = await copy(source, target, merge=True, overwrite=True)
    assert (report.newer, report.conflicting, report.overwritten) == (1, 1, 2)
    now = await stored(target)
    for snapshot in IN_SOURCE:
        assert now[snapshot.key].value == snapshot.value
    for key in ("newer", "conflicting"):
        assert now[key].updated_at > {s.key: s for s in IN_TARGET}[key].updated_at


async def save_today(store: SqlStore) -> None:
    await store.save("replaced", "a bot's save")


async def delete_added(store: SqlStore) -> None:
    await store.delete("added")


@pytest.mark.parametrize(
    ("bot", "overwrite", "words"),
    [
        pytest.param(
            save_today,
            False,
            "holds 2 newer snapshot(s), 1 of the same time with another value and 0 overwritten, "
            "where the merge counted 1, 1 and 0",
            id="one newer than counted",
        ),
        pytest.param(
            save_today,
            True,
            "key 'replaced' has updated_at ",
            id="not what the overwrite wrote",
        ),
        pytest.param(delete_added, False, "key 'added' is in ", id="one gone"),
    ],
)
async def test_copy_merge_verification_catches_a_write_during_the_copy(
    source: SqlStore,
    bot: Callable[[SqlStore], Awaitable[None]],
    overwrite: bool,
    words: str,
) -> None:
    await source.restore(IN_SOURCE)
    async with BotWritesDuringCopy(bot) as target:
        await target.restore(IN_TARGET)
        with pytest.raises(CopyMismatchError, match=re.escape(words)) as caught:
            await copy(source, target, merge=True, overwrite=overwrite)
        assert "did something write to either database during the copy?" in str(caught.value)
        if overwrite:
            assert "and another value, where the merge wrote 2026-03-04T06:06:07" in str(
                caught.value
            )


async def test_copy_verification_catches_a_write_during_the_copy(source: SqlStore) -> None:
    await source.restore(many(3))
    async with BotWritesDuringCopy(save_today) as target:
        with pytest.raises(CopyMismatchError, match=r"key 'replaced' is in .* but not in"):
            await copy(source, target)


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two stores on SQLite files of their own, so that messages tell them apart."""
    urls = [resolve_url(f"sqlite:///{tmp_path / name}") for name in ("source.db", "target.db")]
    for url in urls:
        await upgrade(url)
    async with SqlStore.from_url(urls[0]) as first, SqlStore.from_url(urls[1]) as second:
        yield first, second


THREE = many(3)


@pytest.mark.parametrize(
    ("in_target", "words"),
    [
        pytest.param(
            [THREE[0], Snapshot("bot/S00001", "x", T0), THREE[2]],
            "key 'bot/S00001' has a different value in {target}",
            id="another value",
        ),
        pytest.param(
            [THREE[0], Snapshot("bot/S00001", {"i": 1}, LATER), THREE[2]],
            "key 'bot/S00001' has updated_at 2026-03-04T06:06:07.123456+00:00 in {target}, "
            "not 2026-03-04T05:06:07.123456+00:00",
            id="another time",
        ),
        pytest.param(
            [THREE[0], THREE[2]],
            "key 'bot/S00001' is in {source} but not in {target}",
            id="missing in the middle",
        ),
        pytest.param(
            THREE[:2],
            "key 'bot/S00002' is in {source} but not in {target}",
            id="missing at the end",
        ),
        pytest.param(
            [*THREE, Snapshot("bot/S00000a", 0, T0)],
            "key 'bot/S00000a' is in {target} but not in {source}",
            id="extra in the middle",
        ),
        pytest.param(
            [*THREE, Snapshot("zzz", 0, T0)],
            "key 'zzz' is in {target} but not in {source}",
            id="extra at the end",
        ),
    ],
)
async def test_verify_names_the_first_difference(
    files: tuple[SqlStore, SqlStore], in_target: list[Snapshot], words: str
) -> None:
    source, target = files
    await source.restore(THREE)
    await target.restore(in_target)
    expected = words.format(source=source.url, target=target.url)
    with pytest.raises(CopyMismatchError, match=re.escape(expected)):
        await verify(source, target)


async def test_verify_counts_what_it_compared(files: tuple[SqlStore, SqlStore]) -> None:
    source, target = files
    assert await verify(source, target) == 0
    await source.restore(THREE)
    await target.restore(THREE)
    assert await verify(source, target) == 3
