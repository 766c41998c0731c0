"""README's Python example runs as written (in a fresh interpreter, from a directory of its own
holding the scenario it names)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def readme_block(after_heading: str) -> str:
    text = (REPO / "README.md").read_text()
    section = text.split(after_heading, 1)[1]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, f"no python block after {after_heading!r}"
    return match.group(1)


def test_the_python_api_example_runs(tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    script = tmp_path / "example.py"
    script.write_text(readme_block("### The same from Python"))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "device_003/env: " in result.stdout, result.stdout
    assert "0 missing" in result.stdout, result.stdout
    assert (tmp_path / "hour.jsonl").stat().st_size > 0
