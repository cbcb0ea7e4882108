"""The README and docs/*.md hold true: their Python examples run as written, in order, in a fresh
directory; every relative link and anchor resolves inside the repository; every test they name
exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEST_NAME = re.compile(r"\b(test_\w+\.py)(?:::(\w+))?")
KIT_TEST = re.compile(r"\bStateStoreContract\.(test_\w+)")


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def python_blocks(page: Path = README) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)


def prose(page: Path) -> str:
    """The page without its code blocks and inline code, where a link is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", page.read_text(encoding="utf-8")))


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated one numbered."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCE.sub("", page.read_text("utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, number = slug, 0
        while candidate in found:
            number += 1
            candidate = f"{slug}-{number}"
        found.add(candidate)
    return found


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_opens_with_the_two_commands() -> None:
    opening = "\n".join(README.read_text(encoding="utf-8").splitlines()[:40])
    assert "make demo" in opening
    assert "make test" in opening


@pytest.mark.parametrize("page", [page for page in PAGES if python_blocks(page)], ids=name)
def test_examples_run(page: Path, tmp_path: Path) -> None:
    migrate = "import asyncio, rustrade_store; asyncio.run(rustrade_store.upgrade())"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    steps = [migrate, *python_blocks(page)]
    for number, code in enumerate(steps):
        completed = subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert completed.returncode == 0, (
            f"{name(page)} block {number}:\n{code}\n{completed.stderr}"
        )


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_links_resolve_inside_the_repository(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: outside the repository
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.is_relative_to(ROOT) or not linked.exists():
            broken.append(f"{target}: no such file in the repository")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {name(linked)}")
    assert not broken, f"{name(page)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_the_tests_named_exist(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    missing = []
    for file, function in TEST_NAME.findall(text):
        path = ROOT / "tests" / file
        if not path.exists():
            missing.append(f"tests/{file}")
        elif function and not re.search(rf"def {function}\(", path.read_text("utf-8")):
            missing.append(f"tests/{file}::{function}")
    kit = "".join(
        path.read_text(encoding="utf-8")
        for path in sorted((ROOT / "rustrade_store" / "testing").glob("*.py"))
    )
    missing += [
        f"StateStoreContract.{function}"
        for function in KIT_TEST.findall(text)
        if not re.search(rf"def {function}\(", kit)
    ]
    assert not missing, f"{name(page)} names tests that do not exist: {missing}"
