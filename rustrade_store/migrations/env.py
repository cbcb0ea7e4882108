"""Alembic environment for rustrade-store: async engines, a shared connection, our own version
table, and no logging set-up unless run from the alembic command line."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import TYPE_CHECKING

from alembic import context
from sqlalchemy.pool import NullPool

from rustrade_store._backends import backend_for
from rustrade_store._engine import create_engine, resolve_url
from rustrade_store._schema import VERSION_TABLE, metadata

if TYPE_CHECKING:
    from sqlalchemy import Connection

config = context.config

if config.cmd_opts is not None and config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    explicit = context.get_x_argument(as_dictionary=True).get("url")
    fallback = config.get_main_option("sqlalchemy.url")
    return resolve_url(explicit, default=fallback).render_as_string(hide_password=False)


def _configure(**options: object) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        compare_type=True,
        **options,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    url = _url()
    _configure(url=url, literal_binds=True, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    _configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        backend_for(connection.engine.url).prepare_version_table(connection)
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_engine(_url(), poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
