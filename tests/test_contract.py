"""The packaged contract suite, run against every backend of the package."""

from __future__ import annotations

from rustrade_store.testing import StateStoreContract


class TestSqlStoreContract(StateStoreContract):
    """The ``store`` fixture (conftest) is parametrized over memory, SQLite file and PostgreSQL."""
