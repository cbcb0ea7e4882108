"""Database URLs with several hosts, read and shown in one place.

PostgreSQL (libpq's ``postgresql://u@h1:5432,h2:5433/db``) and MySQL or MariaDB
(``mysql://u@h1:3306,h2:3307/db``) name several servers in one URL; SQLAlchemy's ``make_url``
cannot parse that form, so it becomes SQLAlchemy's own, ``...://u@/db?host=h1:5432&host=h2:5433``
(for asyncpg, which reads it natively; for asyncmy, which takes one host, the store's engine
tries them in order). Every host is checked (no empty one, ports are numbers), every option of
the URL is kept, and every URL the package shows goes through :func:`masked`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from ._errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy import URL

__all__ = [
    "DEFAULT_PORTS",
    "MYSQL_BACKENDS",
    "Host",
    "check_hosts",
    "hosts_as_query",
    "hosts_of",
    "is_memory_url",
    "listed_hosts",
    "masked",
    "parse_host",
    "passwords",
]

DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mariadb": 3306}
"""The backends whose URLs may list several hosts, with the port a host without one gets."""

_SECRET_PARAMETERS = ("password", "sslpassword")
"""Query parameters holding a secret, masked like the password."""

MYSQL_BACKENDS = frozenset({"mysql", "mariadb"})
"""Backend names of the MySQL family; SQLAlchemy calls MariaDB either, by the URL used."""


def is_memory_url(url: URL) -> bool:
    """True for an SQLite URL whose database exists only in memory."""
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


@dataclass(frozen=True, slots=True)
class Host:
    """One host of a URL: a name or an address (IPv6 without brackets), and its port."""

    name: str
    port: int | None

    def __str__(self) -> str:
        name = f"[{self.name}]" if ":" in self.name else self.name
        return name if self.port is None else f"{name}:{self.port}"


def parse_host(text: str) -> Host:
    """``h``, ``h:5432``, ``[::1]:5432`` or a bare IPv6 address (``::1``, no port); raise
    :class:`~rustrade_store.ConfigurationError` for an empty host or a port that is no number."""
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigurationError(
                f"host {text!r} is not a bracketed IPv6 address: write [::1] or [::1]:5432"
            )
        port_text: str | None = rest[1:] if rest else None
    elif text.count(":") > 1:
        name, port_text = text, None
    else:
        name, colon, given = text.partition(":")
        port_text = given if colon else None
    if not name:
        raise ConfigurationError(
            f"a host of the URL is empty ({text!r}): list hosts as h1:5432,h2:5432, with no "
            "empty entry between two commas"
        )
    if port_text is None:
        return Host(name, None)
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ConfigurationError(
            f"the port {port_text!r} of host {name!r} is not a port number: give a number "
            "from 1 to 65535, as in h1:5432"
        )
    return Host(name, int(port_text))


def hosts_as_query(raw: str) -> str:
    """A multi-host URL (``scheme://u@h1:p1,h2:p2/db?opts``, database optional) in
    SQLAlchemy's form, ``scheme://u@/db?host=h1:p1&host=h2:p2&opts``: every option kept, a host
    without a port given the backend's default; any other URL as it is."""
    scheme, sep, rest = raw.partition("://")
    backend = scheme.split("+")[0]
    if not sep or backend not in DEFAULT_PORTS:
        return raw
    # The hosts end at the first "/", "?" or "#" (a password percent-encodes them); the user
    # part at the last "@" before that (a password may hold an unencoded "@").
    ends = [index for index in (rest.find(char) for char in "/?#") if index >= 0]
    netloc, tail = rest[: min(ends, default=len(rest))], rest[min(ends, default=len(rest)) :]
    user, at, hosts = netloc.rpartition("@")
    if "," not in hosts:
        return raw
    path, _, query = tail.partition("?")
    query, _, _ = query.partition("#")
    database = path.removeprefix("/")
    default = DEFAULT_PORTS[backend]
    listed = [parse_host(host) for host in hosts.split(",")]
    params = "&".join(
        "host=" + quote(str(Host(host.name, host.port or default)), safe=":[]") for host in listed
    )
    path = f"/{database}" if database else ""
    return f"{scheme}://{user}{at}{path}?{params}{'&' + query if query else ''}"


def listed_hosts(url: URL) -> list[Host]:
    """The hosts of a URL's ``?host=`` list, checked (see :func:`parse_host`)."""
    given = url.query.get("host", ())
    return [parse_host(host) for host in ((given,) if isinstance(given, str) else given)]


def check_hosts(url: URL) -> None:
    """Raise :class:`~rustrade_store.ConfigurationError` if a ``?host=`` entry of a server URL
    is empty or has a port that is no number (asyncpg would fail on it much later, with
    "unexpected error")."""
    if url.get_backend_name() in DEFAULT_PORTS:
        listed_hosts(url)


def hosts_of(url: URL) -> list[str]:
    """Every ``host:port`` a server URL names, in order: its host, then those of a multi-host
    URL's ``?host=`` (the default port where none is given; IPv6 addresses in brackets); empty
    for SQLite, or when the URL leaves the host to the driver."""
    backend = url.get_backend_name()
    if backend not in DEFAULT_PORTS:
        return []
    port = url.port or DEFAULT_PORTS[backend]
    listed = [str(Host(url.host, port))] if url.host else []
    return listed + [str(Host(host.name, host.port or port)) for host in listed_hosts(url)]


def masked(url: URL) -> str:
    """The URL as text with every password in it replaced by ``***``.

    The one before the host, all of it even when an unencoded ``@`` in it made SQLAlchemy read
    the rest as the host, and any ``?password=`` (or ``?sslpassword=``). Every URL the package
    shows goes through here.
    """
    if url.host and "@" in url.host:
        url = url.set(password="***", host=url.host.rpartition("@")[2])
    hidden = {name: "***" for name in _SECRET_PARAMETERS if name in url.query}
    if hidden:
        url = url.update_query_dict(hidden)
    shown = url.render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    # Hosts of a multi-host URL read as typed (h1:5432 and [::1]:5432, not h1%3A5432).
    given = url.query.get("host", ())
    for host in (given,) if isinstance(given, str) else given:
        shown = shown.replace(f"host={quote(host, safe='')}", f"host={host}")
    return shown


def passwords(url: URL) -> set[str]:
    """Every secret written in ``url``, as given and percent-encoded: what to scrub from text
    that did not come through :func:`masked`, such as a driver's message."""
    found: set[str] = set()
    if url.password:
        found.add(str(url.password))
        if url.host and "@" in url.host:
            found.add(f"{url.password}@{url.host.rpartition('@')[0]}")
    for name in _SECRET_PARAMETERS:
        value = url.query.get(name, ())
        found.update((value,) if isinstance(value, str) else value)
    return {text for secret in found if secret for text in (secret, quote(secret, safe=""))}
