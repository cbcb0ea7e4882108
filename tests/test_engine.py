"""URLs: the async drivers filled in, the environment and default honoured, passwords hidden."""

from __future__ import annotations

import sys

import pytest

from rustrade_store import DEFAULT_URL, ENV_VAR, SqlStore, resolve_url


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("sqlite:///bot.db", "sqlite+aiosqlite:///bot.db"),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///bot.db", "sqlite+aiosqlite:///bot.db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h:5433/db", "postgresql+asyncpg://u@h:5433/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("mysql://u@h/db", "mysql+asyncmy://u@h/db"),
        ("mysql+asyncmy://u@h:3307/db", "mysql+asyncmy://u@h:3307/db"),
        ("mariadb://u@h/db", "mariadb+asyncmy://u@h/db"),
    ],
)
def test_plain_urls_get_the_async_driver(given: str, resolved: str) -> None:
    assert resolve_url(given).render_as_string() == resolved


def test_a_missing_optional_driver_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "asyncmy", None)  # makes `import asyncmy` fail
    with pytest.raises(
        ModuleNotFoundError, match=r"pip install 'rustrade-store\[mysql\]'"
    ) as caught:
        SqlStore.from_url("mysql://trader:s3cret@127.0.0.1/db")
    assert "s3cret" not in str(caught.value)


def test_environment_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_url().render_as_string() == DEFAULT_URL
    monkeypatch.setenv(ENV_VAR, "postgresql://env@h/db")
    assert resolve_url().render_as_string() == "postgresql+asyncpg://env@h/db"
    assert resolve_url("sqlite://").render_as_string() == "sqlite+aiosqlite://"


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("oracle://u@h/db", "unsupported database URL scheme 'oracle'"),
        ("postgresql+psycopg2://u@h/db", "driver 'psycopg2'"),
        ("sqlite+pysqlite:///x.db", "driver 'pysqlite'"),
        ("mysql+pymysql://u@h/db", "driver 'pymysql'"),
        ("not a url", "cannot parse database URL"),
    ],
)
def test_unusable_urls_are_refused_by_name(given: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        resolve_url(given)


def test_unparsable_url_error_does_not_echo_the_password() -> None:
    with pytest.raises(ValueError, match="cannot parse") as caught:
        resolve_url("postgresql://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(caught.value)
