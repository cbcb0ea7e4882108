"""The README's backend example passes the conformance kit, as written, outside the package;
and the kit is not a rubber stamp: the naive translation of the seed's store fails it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Writing another backend"


def example() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], re.DOTALL)
    assert blocks, f"no python block under {SECTION!r}"
    return "\n\n".join(blocks)


def run_pytest(directory: Path, code: str, mode: str) -> subprocess.CompletedProcess[str]:
    """pytest on one test file in an empty directory, with a config of its own, so that
    nothing of this repository's configuration or conftest applies."""
    (directory / "test_store.py").write_text(code, encoding="utf-8")
    (directory / "pytest.ini").write_text(
        f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n",
        encoding="utf-8",
    )
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def passed_count(output: str) -> int:
    found = re.search(r"(\d+) passed", output)
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_readme_map_store_passes_the_kit(tmp_path: Path, mode: str) -> None:
    from rustrade_store.testing import StateStoreContract

    completed = run_pytest(tmp_path, example(), mode)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    kit_tests = [name for name in dir(StateStoreContract) if name.startswith("test_")]
    assert passed_count(output) >= len(kit_tests), output
    assert "skipped" not in output, output


def test_a_store_that_keeps_the_callers_objects_fails_the_kit(tmp_path: Path) -> None:
    """The seed's MapStore translated word for word: no copy, no checks."""
    naive = (
        example()
        .replace("self.texts[check_key(key)] = encode(value)", "self.texts[key] = value")
        .replace("None if text is None else decode(text, key)", "text")
    )
    assert "encode(value)" not in naive
    completed = run_pytest(tmp_path, naive, "strict")
    output = completed.stdout
    assert completed.returncode == 1, output
    assert "FAILED test_store.py::TestMapStore::test_saved_value_is_a_copy" in output
    assert "FAILED test_store.py::TestMapStore::test_bad_value_is_refused_and_nothing_changes" in (
        output
    )
