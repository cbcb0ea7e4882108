"""The packaged contract suite, run against every backend of the package."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rustrade_store.testing import StateStoreContract

if TYPE_CHECKING:
    from rustrade_store import SqlStore


class TestSqlStoreContract(StateStoreContract):
    """Every backend of the package, through the kit third parties use."""

    @pytest.fixture
    def store(self, store: SqlStore) -> SqlStore:
        """The conftest's store, over memory, an SQLite file, PostgreSQL and MariaDB, with its
        check that no pooled connection is left checked out."""
        return store
