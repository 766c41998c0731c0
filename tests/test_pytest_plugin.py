"""edgetwin's pytest plugin as a user's test suite sees it: loaded by the `pytest11` entry point,
its fixtures documented, its broker variants, scopes and skips (pytester runs a suite of tests
written as a user would, in a pytest subprocess)."""

from __future__ import annotations

import pytest

from edgetwin.testing.broker import docker_engine_error

pytest_plugins = ["pytester"]

USER_TESTS = """
import time

import pytest
from edgetwin.testing.capture import Capture

PORTS = []


def test_session_broker_is_shared_a(edgetwin_broker_session):
    PORTS.append(edgetwin_broker_session.port)


def test_session_broker_is_shared_b(edgetwin_broker_session):
    PORTS.append(edgetwin_broker_session.port)
    assert len(set(PORTS)) == 1


@pytest.mark.edgetwin_broker(auth=True, persistence=True)
def test_marked_variant(edgetwin_broker):
    assert edgetwin_broker.endpoint.username is not None
    anonymous = edgetwin_broker.endpoint.as_user(None, None)
    with pytest.raises(ConnectionError):
        Capture(anonymous, "x")
    port = edgetwin_broker.port
    edgetwin_broker.restart()
    assert edgetwin_broker.port == port


@pytest.mark.edgetwin_broker(acl_devices=["pi-a"])
def test_agent_and_gateway_on_an_acl_broker(edgetwin_broker, edgetwin_agent, edgetwin_gateway,
                                            edgetwin_capture):
    edgetwin_capture.subscribe("edgetwin/pi-a/telemetry/+")
    gateway = edgetwin_gateway([{"id": "pi-a", "sensors": {"env": {"driver": "bme280"}}}])
    agent = edgetwin_agent(device_id="pi-a",
                           config={"sensors": {"env": {"driver": "bme280", "interval": 0.2}}})
    assert agent.config.mqtt.username == "pi-a"
    (reading,) = edgetwin_capture.wait_for(lambda m: m.telemetry().source == "emulated")
    assert reading.telemetry().device == "pi-a"
    deadline = time.monotonic() + 10
    while gateway.client.device("pi-a")["served_by"] != "agent":  # the twin saw the agent
        assert time.monotonic() < deadline, gateway.client.device("pi-a")
        time.sleep(0.05)


def test_fleet_and_capture(edgetwin_fleet, edgetwin_capture):
    edgetwin_capture.subscribe("edgetwin/+/telemetry/+")
    fleet = edgetwin_fleet(3, interval=0.2, seed=1)
    for device in fleet.devices():
        edgetwin_capture.wait_for(f"edgetwin/{device}/telemetry/+", count=2)
    edgetwin_capture.assert_sequence_complete("device_000", "env", start=1)
"""


def test_a_user_suite_gets_every_fixture_from_the_installed_plugin(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=5)


def test_every_fixture_is_documented(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--fixtures", "-q")
    text = result.stdout.str()
    for name in (
        "edgetwin_broker",
        "edgetwin_broker_session",
        "edgetwin_broker_factory",
        "edgetwin_broker_factory_session",
        "edgetwin_capture",
        "edgetwin_fleet",
        "edgetwin_agent",
        "edgetwin_gateway",
    ):
        line = next((line for line in text.splitlines() if line.startswith(name + " ")), None)
        assert line is not None, f"{name} is not offered by the plugin"
        after = text.splitlines()[text.splitlines().index(line) + 1]
        assert after.strip(), f"{name} has no documentation"
        assert "no docstring" not in after, f"{name} has no documentation"


def test_without_a_broker_the_test_is_skipped_with_the_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    if docker_engine_error() is None:
        pytest.skip("a Docker engine answers here: the Docker broker would start")
    monkeypatch.setenv("EDGETWIN_TEST_BROKER", "docker")
    pytester.makepyfile(test_user="def test_needs_a_broker(edgetwin_broker):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*SKIPPED*Docker*"])
