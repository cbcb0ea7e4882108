"""The README's Python examples run as written, in order, in a fresh directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)


def test_readme_has_examples() -> None:
    assert len(python_blocks()) >= 3


def test_readme_examples_run(tmp_path: Path) -> None:
    migrate = "import asyncio, rustrade_store; asyncio.run(rustrade_store.upgrade())"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    steps = [migrate, *python_blocks()]
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
        assert completed.returncode == 0, f"README block {number}:\n{code}\n{completed.stderr}"
