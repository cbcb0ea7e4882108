"""The packaged contract suite, run against every backend of the package, and PostgreSQL 18."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rustrade_store import SqlStore
from rustrade_store.testing import StateStoreContract, StateStoreLeaseContract

from .helpers import BACKENDS_AND_POSTGRES_18

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sqlalchemy import URL


@pytest.fixture(params=BACKENDS_AND_POSTGRES_18)
def backend(request: pytest.FixtureRequest) -> str:
    """Every backend, and PostgreSQL 18."""
    name: str = request.param
    return name


class TestSqlStoreContract(StateStoreContract):
    """Every backend of the package, through the kit third parties use."""

    @pytest.fixture
    def store(self, store: SqlStore) -> SqlStore:
        """The conftest's store, over memory, an SQLite file, PostgreSQL and MariaDB, with its
        check that no pooled connection is left checked out."""
        return store


class TestSqlStoreLeaseContract(StateStoreLeaseContract):
    """Leases on every backend of the package, through the kit's optional part."""

    @pytest.fixture
    def store(self, store: SqlStore) -> SqlStore:
        """The conftest's store, as above."""
        return store

    @pytest.fixture
    async def rival(self, backend: str, store: SqlStore, store_url: URL) -> AsyncIterator[SqlStore]:
        """A second store on the same database, as a second copy of the bot opens it: from the
        URL, or, for an in-memory database that nothing else can reach, on the same engine
        (which it leaves open for its owner)."""
        other = SqlStore(store.engine) if backend == "memory" else SqlStore.from_url(store_url)
        try:
            yield other
        finally:
            await other.aclose()
