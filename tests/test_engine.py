"""URLs: the async drivers filled in, the environment and default honoured, passwords hidden."""

from __future__ import annotations

import socket
import sys
from typing import TYPE_CHECKING

import pytest

from rustrade_store import DEFAULT_URL, ENV_VAR, ConfigurationError, SqlStore, resolve_url
from rustrade_store._engine import masked

if TYPE_CHECKING:
    from sqlalchemy import URL


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
    for url in ("mysql://trader:s3cret@127.0.0.1/db", "mariadb://trader:s3cret@127.0.0.1/db"):
        with pytest.raises(
            ConfigurationError, match=r"pip install 'rustrade-store\[mysql\]'"
        ) as caught:
            SqlStore.from_url(url)
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


def test_libpq_multi_host_urls_take_sqlalchemys_form() -> None:
    """``postgresql://user@h1:5432,h2/db`` (what libpq tools print) failed inside make_url with
    a bare ValueError: it becomes SQLAlchemy's ``?host=h1:5432&host=h2:5432``, password kept."""
    url = resolve_url("postgresql://bot:p%40ss@h1:5432,h2/state?target_session_attrs=read-write")
    assert url.query["host"] == ("h1:5432", "h2:5432")
    assert url.password == "p@ss"
    assert url.database == "state"
    assert masked(url) == (
        "postgresql+asyncpg://bot:***@/state?host=h1:5432&host=h2:5432"
        "&target_session_attrs=read-write"
    )


@pytest.mark.postgres
async def test_a_multi_host_url_finds_the_server_that_answers(postgres_url: URL) -> None:
    """Two hosts, the first refusing connections: the store writes to the second."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    live = f"{postgres_url.host}:{postgres_url.port}"
    url = (
        f"postgresql://{postgres_url.username}@127.0.0.1:{dead},{live}/{postgres_url.database}"
        "?target_session_attrs=read-write"
    )
    async with SqlStore.from_url(url) as store:
        await store.save("multi/k", 1)
        assert await store.load("multi/k") == 1
        assert f"127.0.0.1:{dead}" in store.url
