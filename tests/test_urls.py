"""Multi-host URLs, read and shown in one place (``rustrade_store._urls``): libpq's form for
PostgreSQL and the same form for MySQL and MariaDB become SQLAlchemy's ``?host=`` list with every
option kept; a bad host list is a clear ConfigurationError (exit 2 at the command line)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rustrade_store import ConfigurationError
from rustrade_store._engine import masked, resolve_url
from rustrade_store.cli.opening import hosts_of

from .commandline import cli, one_line_error

if TYPE_CHECKING:
    from pathlib import Path


def test_a_libpq_multi_host_url_without_a_database_keeps_its_query() -> None:
    """``?sslmode=require`` became part of the last host name, and the connection went out in
    plain text: every option is kept, sslmode as asyncpg's ssl."""
    url = resolve_url("postgresql://u@h1,h2?sslmode=require")
    assert url.query["host"] == ("h1:5432", "h2:5432")
    assert url.query["ssl"] == "require"
    assert url.database is None
    url = resolve_url("postgresql://u@h1:5432,h2:5433?sslmode=verify-full&application_name=bot")
    assert url.query["host"] == ("h1:5432", "h2:5433")
    assert url.query["ssl"] == "verify-full"
    assert url.query["application_name"] == "bot"


@pytest.mark.parametrize("scheme", ["mysql", "mariadb"])
def test_a_mysql_multi_host_url_takes_sqlalchemys_form(scheme: str) -> None:
    """``make_url`` raised ``invalid literal for int()`` on it."""
    url = resolve_url(f"{scheme}://bot:p%40ss@h1:3307,h2,[::1]:3308/state?charset=utf8mb4")
    assert url.drivername == f"{scheme}+asyncmy"
    assert url.query["host"] == ("h1:3307", "h2:3306", "[::1]:3308")
    assert url.query["charset"] == "utf8mb4"
    assert (url.password, url.database) == ("p@ss", "state")
    assert hosts_of(url) == ["h1:3307", "h2:3306", "[::1]:3308"]
    assert masked(url) == (
        f"{scheme}+asyncmy://bot:***@/state?charset=utf8mb4&host=h1:3307&host=h2:3306"
        "&host=[::1]:3308"
    )


def test_an_ipv6_host_is_shown_as_an_address() -> None:
    """``?host=::1`` was shown by doctor as host ``:`` and port ``1``."""
    url = resolve_url("postgresql://u@/db?host=::1&host=[::2]:5433")
    assert hosts_of(url) == ["[::1]:5432", "[::2]:5433"]
    assert masked(url) == "postgresql+asyncpg://u@/db?host=::1&host=[::2]:5433"


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ("postgresql://u@h1,,h2/db", "a host of the URL is empty"),
        ("postgresql://u@h1:5432,,h2:5432?sslmode=require", "a host of the URL is empty"),
        ("postgresql://u@h1:x5432,h2:5432?sslmode=require", "the port 'x5432' of host 'h1'"),
        ("postgresql://u@h1,h2:/db", "the port '' of host 'h2'"),
        ("postgresql://u@/db?host=h1:abc", "the port 'abc' of host 'h1'"),
        ("mysql://u@h1:3306,h2:70000/db", "the port '70000' of host 'h2'"),
        ("mariadb://u@h1,[::1/db", "is not a bracketed IPv6 address"),
    ],
)
def test_a_bad_host_list_is_refused_by_name(given: str, words: str) -> None:
    with pytest.raises(ConfigurationError, match=words.replace("[", r"\[")):
        resolve_url(given)


def test_a_bad_host_list_is_a_usage_error_at_the_command_line(tmp_path: Path) -> None:
    """ "unexpected error: ArgumentError: Received non-integer port arguments" (exit 3) before."""
    for url in ("postgresql://u@h1:5432,h2:x?sslmode=require", "mysql://u:s3cret@h1,,h2/db"):
        run = cli("doctor", url=url, cwd=tmp_path)
        one_line_error(run, 2)
        assert "unexpected" not in run.err
        assert "s3cret" not in run.err
