"""The package's shape, which issue 19 gave it, kept: SQL is built in the statements module, the
per-backend classes and the migrations only; no module outgrows what a reader holds in mind;
the public API is what ``__init__`` exports, every other module marked internal."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rustrade_store

PACKAGE = Path(rustrade_store.__file__).parent
MODULES = sorted(path for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)

BUILDERS = frozenset(
    {
        "and_",
        "any_",
        "bindparam",
        "case",
        "cast",
        "delete",
        "exists",
        "func",
        "insert",
        "literal",
        "literal_column",
        "not_",
        "or_",
        "select",
        "text",
        "union_all",
        "update",
    }
)
"""SQLAlchemy's constructs for building statements."""

BUILT_IN = ("_statements.py", "_backends/", "migrations/versions/")
"""Where statements are built: the statements, their per-backend part, the migrations' own."""

PUBLIC = frozenset({"__init__.py", "codec.py", "transfer.py", "py.typed"})
"""The top-level modules the docs name as public; ``cli`` and ``testing`` are packages."""


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_statements_are_built_in_three_places(path: Path) -> None:
    if relative(path).startswith(BUILT_IN):
        return
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy")
        for alias in node.names
    }
    dialect_modules = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy.dialects"
    }
    assert not imported & BUILDERS, f"{relative(path)} builds SQL: {sorted(imported & BUILDERS)}"
    allowed_dialect_types = relative(path) == "_schema.py"  # the column types per database
    assert allowed_dialect_types or not dialect_modules, relative(path)


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_no_module_outgrows_five_hundred_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= 500, f"{relative(path)} has {lines} lines"


def test_internal_modules_are_marked_internal() -> None:
    top = {path.name for path in PACKAGE.iterdir() if path.is_file()}
    unmarked = sorted(name for name in top - PUBLIC if not name.startswith("_"))
    assert not unmarked, f"modules neither public nor marked internal: {unmarked}"
