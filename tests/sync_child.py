"""A process with a ``SyncStore`` for the tests that need one of their own: exit, fork, Ctrl-C.

``python sync_child.py SCENARIO URL`` prints one line per step, flushed at once:

- ``exit-open``: take the lease on ``bot1/``, save ``bot1/k``, print ``OPEN``, and end the
  script with the store open (its close at exit releases the lease).
- ``fork``: take the lease, save, fork. The child prints ``CHILD REFUSED <message>`` for a
  call on the inherited store, ``CHILD SAVED`` once a store of its own has saved, and exits
  normally. The parent waits for it, then prints ``PARENT <child status> <connections opened
  meanwhile> <lease held>`` after a call on its store.
- ``interrupt``: print ``CALLING`` and count the keys (on a table the test has locked); on
  Ctrl-C print ``INTERRUPTED``, then wait for a line on stdin, save, and print ``SAVED``.
"""

from __future__ import annotations

import os
import sys

from sqlalchemy import event

from rustrade_store import StorageError, SyncStore


def say(line: str) -> None:
    print(line, flush=True)


def exit_open(url: str) -> None:
    store = SyncStore.from_url(url)
    store.lease("bot1/", ttl=30).acquire()
    store.save("bot1/k", {"open": True})
    say("OPEN")


def fork(url: str) -> None:
    store = SyncStore.from_url(url)
    lease = store.lease("bot1/", ttl=30).acquire()
    store.save("bot1/k", {"by": "parent"})
    opened: list[object] = []
    event.listen(store.engine.sync_engine, "connect", lambda *_: opened.append(1))
    pid = os.fork()
    if pid == 0:
        try:
            store.load("bot1/k")
        except StorageError as exc:
            say(f"CHILD REFUSED {exc}")
        with SyncStore.from_url(url) as own:
            own.save("child/k", {"by": "child"})
        say("CHILD SAVED")
        sys.exit(0)  # a normal exit: the inherited store's close at exit runs, and must not hang
    _, status = os.waitpid(pid, 0)
    assert store.load("bot1/k") == {"by": "parent"}
    say(f"PARENT {os.waitstatus_to_exitcode(status)} {len(opened)} {lease.held}")
    store.close()


def interrupt(url: str) -> None:
    with SyncStore.from_url(url, timeout=600) as store:
        say("CALLING")
        try:
            store.count()
        except KeyboardInterrupt:
            say("INTERRUPTED")
        sys.stdin.readline()
        store.save("after/ctrl-c", 1)
        say("SAVED")


if __name__ == "__main__":
    {"exit-open": exit_open, "fork": fork, "interrupt": interrupt}[sys.argv[1]](sys.argv[2])
