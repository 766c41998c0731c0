"""The edgetwin pytest plugin: fixtures that start edgetwin's pieces for your own tests.

pytest loads it through the `pytest11` entry point as soon as edgetwin is installed; README's
"Testing your own code against edgetwin" documents every fixture. Fixtures are named
`edgetwin_*` so that they cannot clash with a project's own or another plugin's, and their
modules import the heavy parts of edgetwin only when a test asks for them.
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "edgetwin.testing.broker_fixtures",
    "edgetwin.testing.fleet_fixtures",
    "edgetwin.testing.agent_fixtures",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "edgetwin_broker(**options): the variant of the edgetwin_broker fixture for this test "
        "(the options of edgetwin.testing.broker.start_broker: persistence, auth, tls, "
        "acl_devices, ...)",
    )
