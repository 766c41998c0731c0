"""A device's page in a real headless Chromium: its twin documents and watch commands, the
desired configuration edited as a form and round-tripped to a real agent on emulated chips, a
409 shown field by field and rebased, an agent's rejection, adding and removing manifest
devices, and the API token asked for once per tab.

One broker, gateway, agent and browser serve the whole module (each test reads the versions it
starts from rather than assuming them), which keeps the file's run time near 30 s; the browser
loads the page afresh at each test. Skipped when no Chromium binary is found, like
tests/test_fleet_page.py.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgetwin.gateway.app import create_app
from edgetwin.gateway.config import GatewayConfig, ManifestDevice
from edgetwin.testing.agent import EmulatedAgent
from edgetwin.testing.broker import Broker
from edgetwin.testing.broker_fixtures import BrokerFactory
from edgetwin.testing.capture import as_endpoint
from edgetwin.testing.gateway import serving
from edgetwin.testing.waiting import poll
from tests.browser import Chromium
from tests.browser import chromium_binary as find_chromium
from tests.fleet_helpers import bme280, mqtt_settings, one_bme280

pytestmark = pytest.mark.integration

STATIC = Path(__file__).resolve().parent.parent / "gateway" / "static"
TOKEN = "device-page-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
AGENT = "greenhouse-01"  # served by a real agent on an emulated BME280
SIMULATED = "greenhouse-02"  # no agent: the gateway stands in
TOKEN_KEY = "edgetwin.api-token"  # common.js keeps the token under this sessionStorage key


@dataclass
class Page:
    base: str
    broker: Broker
    browser: Chromium

    def open(self, fragment: str = "", *, token: bool = True) -> None:
        """Load the page afresh (not a same-document hash change), with the tab's token set or
        cleared."""
        self.browser.navigate("about:blank")
        self.browser.wait_for("location.href === 'about:blank'", what="blank page")
        self.browser.navigate(f"{self.base}/")
        self.browser.wait_for("document.readyState === 'complete'", what="page loaded")
        value = json.dumps(TOKEN) if token else "null"
        self.browser.evaluate(
            f"{value} === null ? sessionStorage.removeItem('{TOKEN_KEY}') "
            f": sessionStorage.setItem('{TOKEN_KEY}', {value})"
        )
        if fragment:
            self.browser.evaluate(f"location.hash = {json.dumps(fragment)}")

    def js(self, expression: str) -> Any:
        return self.browser.evaluate(expression)

    def wait(self, expression: str, what: str, timeout: float = 15) -> Any:
        return self.browser.wait_for(expression, timeout=timeout, what=what)

    def text(self, selector: str) -> str:
        return str(self.js(f"document.querySelector({json.dumps(selector)}).textContent"))

    def click(self, selector: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def fill(self, selector: str, value: str) -> None:
        """Type into an input as a person would: the value, then the input event."""
        self.js(
            f"(() => {{ const n = document.querySelector({json.dumps(selector)}); "
            f"n.value = {json.dumps(value)}; "
            "n.dispatchEvent(new Event('input', {bubbles: true})); })()"
        )

    def open_device(self, device: str, *, token: bool = True) -> None:
        self.open(f"#/device/{device}", token=token)
        self.wait(
            f"document.getElementById('device-title').textContent === '{device}' && "
            "document.querySelector('#desired-editor .sensor-row') !== null && "
            "document.getElementById('desired-panel').dataset.base !== ''",
            what=f"{device}'s page with its config form",
        )

    def row(self, sensor: str) -> str:
        return f'#desired-editor .sensor-row[data-sensor="{sensor}"]'


def desired(base: str, device: str) -> tuple[int, dict[str, Any]]:
    """The device's desired version and sensors; without a desired document, version 0 and
    the sensors it runs without one (its manifest's), so that a test may run on its own."""
    answer = httpx.get(f"{base}/devices/{device}/desired", timeout=5)
    if answer.status_code == 404:
        manifest: dict[str, Any] = twin(base, device)["manifest_sensors"]
        return 0, manifest
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return int(body["version"]), body["sensors"]


def put_outputs(base: str, device: str, outputs: dict[str, Any]) -> int:
    """Give the device's desired document these outputs (none: `{}`), its sensors kept, under
    `If-Match` of the version read; returns that version."""
    version, sensors = desired(base, device)
    answer = httpx.put(
        f"{base}/devices/{device}/desired",
        json={"sensors": sensors, "outputs": outputs},
        headers={**AUTH, "If-Match": f'"{version}"'},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    return version


def twin(base: str, device: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{base}/devices/{device}", timeout=5).json()
    return answer


@pytest.fixture(scope="module")
def page(
    edgetwin_broker_factory_session: BrokerFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Page]:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no chromium binary on PATH (apt-get install chromium, or set EDGETWIN_CHROMIUM); "
            ".ci/run installs it"
        )
    broker = edgetwin_broker_factory_session()
    work = tmp_path_factory.mktemp("device-page")
    config = GatewayConfig.from_builtins(
        {
            "mqtt": mqtt_settings(
                broker, keepalive=2, reconnect_min_delay=0.2, reconnect_max_delay=1
            ),
            "presence": {"startup_grace": 0.3},
            "api": {"token": TOKEN},
            "devices": [
                ManifestDevice(id=AGENT, site="north", sensors={"env": bme280(0.3)}),
                ManifestDevice(
                    id=SIMULATED,
                    site="south",
                    sensors={"env": bme280(0.5), "outdoor": bme280(0.5, address=0x77)},
                ),
            ],
        }
    )
    with (
        serving(create_app(config)) as base,
        EmulatedAgent(as_endpoint(broker), one_bme280(AGENT, 0.3), state_dir=work / "state"),
        Chromium(binary, work / "browser") as browser,
    ):
        poll(
            lambda: twin(base, AGENT)["sensors"]["env"]["source"] == "agent-emulation",
            timeout=15,
            what="the agent online",
        )
        yield Page(base, broker, browser)
        errors = [
            e["params"]["exceptionDetails"]
            for e in browser._events  # noqa: SLF001 - the pages' uncaught exceptions, if any
            if e.get("method") == "Runtime.exceptionThrown"
        ]
        assert errors == [], "uncaught exceptions in the page"


def test_the_twin_documents_and_watch_commands_are_shown(page: Page) -> None:
    page.open_device(AGENT)
    docs = "#twin-docs"
    page.wait(
        f"document.querySelector('{docs} [data-doc=status]')?.textContent.includes('online') && "
        f"document.querySelector('{docs} [data-doc=state] table')?.textContent.includes('ok') &&"
        f" document.querySelector('{docs} [data-doc=handovers] table') !== null",
        what="status, state and hand-overs drawn",
    )
    status = page.text(f"{docs} [data-doc=status]")
    assert "birth" in status  # the reason of the status the agent sent
    assert "boot" in status
    assert "emulated" in page.text(f"{docs} [data-doc=state]")  # the sensor's back end
    handovers = page.text(f"{docs} [data-doc=handovers]")
    assert "agent" in handovers
    assert "env" in handovers
    # As readable text, and as the raw document beside it.
    assert page.js(f"document.querySelectorAll('{docs} dl dt').length") >= 6
    raw = json.loads(page.text(f"{docs} details.raw pre"))
    assert raw["id"] == AGENT
    assert raw["handovers"]
    for name in ("desired", "reported"):
        assert page.js(f"document.querySelector('{docs} [data-doc={name}]') !== null")

    page.wait(
        "document.querySelectorAll('#watch-commands .command').length >= 6",
        what="the watch commands",
    )
    commands = page.js(
        "[...document.querySelectorAll('#watch-commands code')].map(c => c.textContent)"
    )
    broker = f"mqtt://{page.broker.host}:{page.broker.port}"
    assert f"edgetwin watch --broker {broker} --topic 'edgetwin/{AGENT}/#'" in commands
    mosquitto = [shlex.split(c) for c in commands if c.startswith("mosquitto_sub")]
    assert mosquitto[0][:5] == [
        "mosquitto_sub",
        "-h",
        page.broker.host,
        "-p",
        str(page.broker.port),
    ]
    assert f"edgetwin/{AGENT}/#" in mosquitto[0]
    assert f"curl -s {page.base}/devices/{AGENT}" in commands
    assert any(c.startswith("curl -sN") and "/events?device=" in c for c in commands)

    # The copy button: to the clipboard where the page may write it, else selected for Ctrl+C.
    page.browser.send(
        "Browser.grantPermissions",
        {"origin": page.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    page.click("#watch-commands .command button.copy")
    outcome = page.wait(
        "document.querySelector('#watch-commands .command button.copy').dataset.copied",
        what="the copy button's answer",
    )
    if outcome == "true":
        assert page.js("navigator.clipboard.readText()") == commands[0]
    else:
        assert outcome == "selected"
        assert page.js("getSelection().toString()") == commands[0]


def test_a_config_edit_round_trips_to_the_agent(page: Page) -> None:
    version, _ = desired(page.base, AGENT)
    page.open_device(AGENT)
    env = page.row("env")
    # Every field the agent checks is set, whatever an earlier test left in the document.
    page.fill(f"{env} .f-driver", "bme280")
    page.fill(f"{env} .f-address", "0x76")
    page.fill(f"{env} .f-interval", "0.25")
    assert page.js("document.getElementById('desired-panel').dataset.dirty") == "true"
    page.click("#desired-save")
    page.wait(
        "document.getElementById('config-state').dataset.state === 'in_sync' && "
        f"document.getElementById('config-state').dataset.version === '{version + 1}'",
        what="the agent applying the new version",
    )
    assert page.text("#config-state") == f"applied v{version + 1}"
    page.wait(
        "document.getElementById('desired-message').textContent === "
        f"'version {version + 1} applied by the agent'",
        what="the save's outcome beside the button",
    )
    assert page.js("document.getElementById('rejection').hidden") is True
    after, sensors = desired(page.base, AGENT)
    assert after == version + 1
    assert sensors["env"]["interval"] == 0.25
    assert sensors["env"]["address"] == 0x76
    reported = twin(page.base, AGENT)["reported"]
    assert (reported["status"], reported["applied_version"]) == ("applied", version + 1)
    # The twin documents follow: the reported document says so too.
    page.wait(
        "document.querySelector('#twin-docs [data-doc=reported]').textContent"
        f".includes('{version + 1}')",
        what="the reported document redrawn",
    )


def test_a_conflict_shows_what_changed_and_rebase_keeps_the_edit(page: Page) -> None:
    page.open_device(SIMULATED)
    version, sensors = desired(page.base, SIMULATED)
    page.wait(
        f"document.getElementById('desired-panel').dataset.base === '{version}'",
        what="the form based on the current version",
    )
    page.fill(f"{page.row('env')} .f-interval", "0.7")
    # Behind the page's back: another operator changes the other sensor.
    changed = {**sensors} if sensors else {"env": bme280(0.5).to_builtins()}
    changed["outdoor"] = {**bme280(0.5, address=0x77).to_builtins(), "interval": 0.9}
    answer = httpx.put(
        f"{page.base}/devices/{SIMULATED}/desired",
        json={"sensors": changed},
        headers={**AUTH, "If-Match": f'"{version}"'},
        timeout=5,
    )
    assert answer.status_code == 200, answer.text
    # The twin documents follow the feed; the edited form keeps the version it started from.
    page.wait(
        "document.querySelector('#twin-docs [data-doc=desired] dd')?.textContent"
        f" === '{version + 1}'",
        what="the new desired document drawn",
    )
    assert page.js("document.getElementById('desired-panel').dataset.base") == str(version)
    page.click("#desired-save")
    page.wait("!document.getElementById('conflict').hidden", what="the conflict shown")
    assert "not saved" in page.text("#desired-message")
    assert page.text("#conflict-base") == str(version)
    assert page.text("#conflict-current") == str(version + 1)
    rows = page.js(
        "Object.fromEntries([...document.querySelectorAll('#conflict-rows tr')]"
        ".map(r => [r.dataset.field, [r.className, ...[...r.cells].map(c => c.textContent)]]))"
    )
    # Theirs: outdoor's interval, 0.5 when the edit began, 0.9 now; untouched in the edit.
    assert rows["outdoor.interval"] == ["they-changed", "outdoor.interval", "0.5", "0.9", "0.5"]
    # Mine: env's interval.
    assert rows["env.interval"] == ["you-changed", "env.interval", "0.5", "0.5", "0.7"]
    assert set(rows) == {"outdoor.interval", "env.interval"}
    # The form keeps the operator's input through the 409.
    assert page.js(f"document.querySelector('{page.row('env')} .f-interval').value") == "0.7"

    page.click("#conflict-rebase")
    page.wait(
        "document.getElementById('conflict').hidden && "
        f"document.getElementById('desired-panel').dataset.base === '{version + 1}'",
        what="the form rebased on the current version",
    )
    interval = "document.querySelector('{row} .f-interval').value"
    assert page.js(interval.format(row=page.row("env"))) == "0.7"
    assert page.js(interval.format(row=page.row("outdoor"))) == "0.9"
    page.click("#desired-save")
    page.wait(
        f"document.getElementById('desired-message').textContent.includes('{version + 2}')",
        what="the rebased edit saved",
    )
    after, sensors = desired(page.base, SIMULATED)
    assert after == version + 2
    assert (sensors["env"]["interval"], sensors["outdoor"]["interval"]) == (0.7, 0.9)


def test_the_agents_rejection_is_shown_with_its_reason(page: Page) -> None:
    page.open_device(AGENT)
    # Well-formed, so the gateway takes it; no BME280 can be strapped to 0x40, so the agent
    # refuses it rather than run a sensor that can never come up.
    page.fill(f"{page.row('env')} .f-address", "0x40")
    page.click("#desired-save")
    page.wait(
        "!document.getElementById('rejection').hidden && "
        "document.getElementById('config-state').dataset.state === 'rejected'",
        what="the rejection shown",
    )
    version, _ = desired(page.base, AGENT)
    reported = twin(page.base, AGENT)["reported"]
    assert reported["status"] == "rejected"
    assert page.text("#rejection-reason") == reported["reason"]
    assert "bme280 cannot be at 0x40" in page.text("#rejection-reason")
    assert page.text("#rejected-version") == str(version)
    assert page.text("#rejection-running") == str(reported["applied_version"])
    assert page.text("#config-state") == f"rejected v{version}"
    assert "rejected by the agent" in page.text("#desired-message")
    # Fixed and saved again: applied, and the alarm goes.
    page.fill(f"{page.row('env')} .f-address", "0x76")
    page.click("#desired-save")
    page.wait(
        "document.getElementById('rejection').hidden && "
        f"document.getElementById('config-state').dataset.version === '{version + 1}' && "
        "document.getElementById('config-state').dataset.state === 'in_sync'",
        what="the fixed config applied",
    )


def test_devices_are_added_and_removed_from_the_page(page: Page) -> None:
    page.open()
    page.wait("document.querySelectorAll('#devices tr').length === 2", what="the fleet")
    page.click("#add-device-button")
    page.wait("!document.getElementById('add-device').hidden", what="the add form")
    sensor = "#add-sensors .sensor-row"
    # A 409: the id is taken. The gateway's reason is shown and the input kept.
    page.fill("#add-id", SIMULATED)
    page.fill("#add-site", "west")
    page.fill("#add-labels", "row=9, crop=basil")
    page.fill(f"{sensor} .f-interval", "0.5")
    page.click("#add-submit")
    page.wait(
        "document.getElementById('add-message').dataset.kind === 'error'", what="the 409 shown"
    )
    assert "already in the manifest" in page.text("#add-message")
    assert page.js("document.getElementById('add-id').value") == SIMULATED
    # A 422: polled faster than the gateway allows.
    page.fill("#add-id", "added-01")
    page.fill(f"{sensor} .f-interval", "0.01")
    page.click("#add-submit")
    page.wait(
        "document.getElementById('add-message').textContent.includes('min_interval')",
        what="the 422 shown",
    )
    assert page.js("document.getElementById('add-site').value") == "west"
    page.fill(f"{sensor} .f-interval", "0.5")
    page.click("#add-submit")
    page.wait(
        "document.getElementById('add-message').textContent === 'added added-01'",
        what="the device added",
    )
    row = 'tr[data-device="added-01"]'
    page.wait(
        f"document.querySelector('{row} .badge.src-simulated') !== null",
        what="the new device in the fleet, simulated",
    )
    added = twin(page.base, "added-01")
    assert (added["site"], added["labels"]) == ("west", {"row": "9", "crop": "basil"})
    assert added["desired"]["sensors"]["env"]["interval"] == 0.5

    page.click(f"{row} a.device-id")
    page.wait(
        "document.getElementById('device-title').textContent === 'added-01'",
        what="its page",
    )
    page.click("#remove-device")
    assert page.js("document.getElementById('remove-confirm').hidden") is False
    page.click("#remove-no")  # a second thought: nothing happens
    assert httpx.get(f"{page.base}/devices/added-01", timeout=5).status_code == 200
    page.click("#remove-device")
    page.click("#remove-yes")
    page.wait(
        "!document.getElementById('fleet-view').hidden && "
        "document.querySelectorAll('#devices tr').length === 2 && "
        f"document.querySelector('{row}') === null",
        what="back on the fleet, the device gone",
    )
    assert httpx.get(f"{page.base}/devices/added-01", timeout=5).status_code == 404


def test_the_token_is_asked_for_once_per_tab(page: Page) -> None:
    page.open_device(SIMULATED, token=False)
    page.js(
        "window.asked = 0; const show = HTMLDialogElement.prototype.showModal; "
        "HTMLDialogElement.prototype.showModal = function () { window.asked += 1; "
        "return show.call(this); }"
    )
    version, _ = desired(page.base, SIMULATED)
    page.fill(f"{page.row('env')} .f-interval", "0.6")
    page.click("#desired-save")
    page.wait("document.getElementById('token-dialog').open", what="the token asked for")
    page.fill("#token-input", TOKEN)
    page.click("#token-ok")
    page.wait(
        f"document.getElementById('desired-message').textContent.includes('{version + 1}')",
        what="saved with the token typed",
    )
    page.fill(f"{page.row('env')} .f-interval", "0.8")
    page.click("#desired-save")
    page.wait(
        f"document.getElementById('desired-message').textContent.includes('{version + 2}')",
        what="saved again",
    )
    assert page.js("window.asked") == 1
    assert page.js("document.getElementById('token-button').dataset.held") == "true"
    assert desired(page.base, SIMULATED)[1]["env"]["interval"] == 0.8


def test_outputs_are_shown_and_a_value_is_set_from_the_page(page: Page) -> None:
    outputs = {
        "lamp": {"driver": "digital_output", "pin": 17, "value": 0, "backend": "emulated"},
        "fan": {"driver": "pwm_output", "pin": 18, "value": 0.2, "backend": "emulated"},
    }
    version = put_outputs(page.base, AGENT, outputs)
    page.open_device(AGENT)
    lamp, fan = '#output-rows tr[data-output="lamp"]', '#output-rows tr[data-output="fan"]'
    page.wait(
        f"document.querySelector('{lamp}')?.dataset.applied === '0' && "
        f"document.querySelector('{fan}')?.dataset.applied === '0.2'",
        what="the outputs as the agent applied them",
    )
    assert page.text(f"{lamp} .output-where") == "GPIO17"
    assert page.text(f"{lamp} .output-applied") == "0 · emulated"
    assert page.js(f"document.querySelector('{lamp} input').type") == "checkbox"
    assert page.js(f"document.querySelector('{fan} input').value") == "0.2"

    page.click(f"{lamp} input")
    page.click(f"{lamp} button")
    page.wait(
        f"document.querySelector('{lamp}').dataset.applied === '1'",
        what="the lamp switched on by the agent",
    )
    assert twin(page.base, AGENT)["reported"]["outputs"]["lamp"]["value"] == 1.0
    assert desired(page.base, AGENT)[0] == version + 2

    # Out of range: the gateway's reason is shown, nothing is saved, the fan runs on.
    page.fill(f"{fan} input", "1.5")
    page.click(f"{fan} button")
    page.wait(
        "document.getElementById('outputs-message').dataset.kind === 'error'",
        what="the refusal shown",
    )
    assert "refused, not clamped" in page.text("#outputs-message")
    assert desired(page.base, AGENT)[0] == version + 2
    assert page.js(f"document.querySelector('{fan} input').value") == "1.5", "the input is kept"
    page.fill(f"{fan} input", "0.6")
    page.click(f"{fan} button")
    page.wait(
        f"document.querySelector('{fan}').dataset.applied === '0.6'",
        what="the new duty applied",
    )
    assert page.text(f"{fan} .output-desired") == "0.6"

    # The outputs leave the document, for the tests that share this agent.
    put_outputs(page.base, AGENT, {})


def test_a_simulated_devices_outputs_are_applied_by_the_gateway(page: Page) -> None:
    relay = {"driver": "digital_output", "pin": 22, "value": 1, "backend": "emulated"}
    put_outputs(page.base, SIMULATED, {"relay": relay})
    page.open_device(SIMULATED)
    row = '#output-rows tr[data-output="relay"]'
    page.wait(
        f"document.querySelector('{row}')?.dataset.backend === 'simulated'",
        what="the relay applied by the gateway that simulates the device",
    )
    assert page.text(f"{row} .output-applied") == "1 · simulated"
    put_outputs(page.base, SIMULATED, {})
    page.wait("document.getElementById('outputs-panel').hidden", what="the outputs panel gone")
