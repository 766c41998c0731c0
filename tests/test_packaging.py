"""The wheel is a good citizen in a user's environment: it adds one import package, `edgetwin`."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # The project's own build backend, as `uv build` and `pip wheel` call it.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from hatchling.build import build_wheel; build_wheel(sys.argv[1])",
            str(out),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("edgetwin-*.whl")
    return built


def test_the_wheel_installs_one_top_level_import_package(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/", 1)[0] for name in names}
    dist_info = {name for name in top_level if name.endswith(".dist-info")}
    assert top_level - dist_info == {"edgetwin"}
    # The repository's top-level folders are inside it, each file once.
    for module in ("agent/runtime.py", "gateway/app.py", "hardware/drivers/bme280.py"):
        assert names.count(f"edgetwin/{module}") == 1
    assert "edgetwin/py.typed" in names


def test_the_packages_load_under_one_name_only() -> None:
    """Importing the whole product never loads a module as bare `agent`, `gateway` or `hardware`,
    which would be a second copy of the same file with its own state."""
    probe = (
        "import sys, edgetwin.cli, edgetwin.agent.runtime, edgetwin.gateway.app, "
        "edgetwin.gateway.engine.realtime, edgetwin.hardware.registry\n"
        "bare = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('agent', 'gateway', 'hardware', 'tests'))\n"
        "print(','.join(bare))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True
    )
    assert result.stdout.strip() == ""
