"""The contract suite, packaged: run every test the package holds itself to against any store.

Subclass :class:`StateStoreContract` in a test module and say how to open a fresh, empty store::

    class TestMyStore(StateStoreContract):
        async def make_store(self) -> StateStore:
            return MyStore()

The kit closes the store after each test. A store that needs more set-up or tear-down than
that overrides the ``store`` fixture instead (with ``@pytest_asyncio.fixture``, which
pytest-asyncio's strict mode requires of an async fixture).

Needs pytest and pytest-asyncio (``pip install 'rustrade-store[testing]'``); the tests carry
their own asyncio mark, so they run in pytest-asyncio's strict mode as well as in auto mode.
A store can hold values however it likes; :func:`rustrade_store.codec.encode_entry` (or
:func:`~rustrade_store.codec.check_key` and :func:`~rustrade_store.codec.encode`) and
:func:`~rustrade_store.codec.decode` give it the checks and the exact round trip the tests ask
for.

Leases are an optional capability with a kit of their own: a backend that offers them (as
:class:`~rustrade_store.SqlStore` does) subclasses :class:`StateStoreLeaseContract` too and says
how to open a second store on the same database, a second copy of the bot::

    class TestMyStoreLeases(StateStoreLeaseContract):
        async def make_store(self) -> LeasingStore:
            return MyStore(DATABASE)

        async def make_rival(self, store: LeasingStore) -> LeasingStore:
            return MyStore(DATABASE)
"""

from __future__ import annotations

from ._contract import StateStoreContract
from ._leases import BAD_PREFIXES, LeaseHandle, LeasingStore, StateStoreLeaseContract
from ._values import BAD_KEYS, BAD_VALUES, EXACT_VALUES, assert_same_json, nested

__all__ = [
    "BAD_KEYS",
    "BAD_PREFIXES",
    "BAD_VALUES",
    "EXACT_VALUES",
    "LeaseHandle",
    "LeasingStore",
    "StateStoreContract",
    "StateStoreLeaseContract",
    "assert_same_json",
    "nested",
]
