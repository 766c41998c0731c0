"""`edgetwin demo`: a complete fleet on one machine with nothing configured.

An embedded broker (the local mosquitto binary on a free port, or an in-process Python broker),
the gateway simulating a few devices, and one agent reading emulated chips. The agent joins a
few seconds after the gateway, so its device is first simulated and then handed back.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import uvicorn

from edgetwin.agent.config import (
    AgentConfig,
    AgentMqttSettings,
    AgentSection,
    MqttSettings,
    Secret,
)
from edgetwin.agent.contract import SensorBackend, SensorSettings
from edgetwin.agent.logs import configure_logging
from edgetwin.agent.runtime import Agent
from edgetwin.gateway.broker import free_port, start_embedded_broker
from edgetwin.gateway.cli import serve
from edgetwin.gateway.config import (
    ApiSection,
    GatewayConfig,
    GatewayMqttSettings,
    GatewayObservability,
    ManifestDevice,
    ServerSection,
    default_sensors,
)
from edgetwin.gateway.scenario.model import ResponseSpec

log = logging.getLogger(__name__)

AGENT_DEVICE = "demo-pi"
LOOP_DEVICE = "sim-000"
# sim-000's room answers its heater: up to +6 °C, 63 % of it after a minute (README, "Closed
# loop"). The heater is an output of its desired document, switched on through the API.
ROOM_RESPONSE = ResponseSpec(
    sensor="env", quantity="temperature", time_constant=60.0, gains={"heater": 6.0}
)
HEATER_ON = '{"outputs": {"heater": {"driver": "digital_output", "pin": 17, "value": 1}}}'


def demo_sensors(interval: float) -> dict[str, SensorSettings]:
    return {
        "env": SensorSettings(driver="bme280", interval=interval, backend=SensorBackend.EMULATED),
        "env-outdoor": SensorSettings(
            driver="bme280", address=0x77, interval=interval, backend=SensorBackend.EMULATED
        ),
    }


def run_demo(
    api_port: int | None = None,
    simulated_devices: int = 4,
    duration: float | None = None,
    broker: Literal["auto", "mosquitto", "inprocess"] = "auto",
    agent_delay: float = 5.0,
) -> int:
    configure_logging("edgetwin-demo", "WARNING")
    with (
        tempfile.TemporaryDirectory(prefix="edgetwin-demo-") as workdir,
        start_embedded_broker("inprocess" if broker == "inprocess" else "mosquitto") as embedded,
    ):
        if broker == "mosquitto" and embedded.protocol != "5":
            raise SystemExit("edgetwin demo: no mosquitto binary found; try --broker inprocess")
        mqtt = MqttSettings(
            host=embedded.host, port=embedded.port, protocol=embedded.protocol, keepalive=5
        )
        port = api_port or free_port()
        # The sim-* devices are manifest devices with no agent, so the twin shows them
        # simulated beside demo-pi, the way a site's missing boards would be.
        simulated = [
            ManifestDevice(
                id=f"sim-{i:03d}",
                sensors=default_sensors(2.0),
                site="demo",
                responses=[ROOM_RESPONSE] if f"sim-{i:03d}" == LOOP_DEVICE else [],
            )
            for i in range(simulated_devices)
        ]
        # Writes (the page's config form, devices, the engine panel) need a token; one made
        # for this run and printed, unless the environment names one.
        token = os.environ.get("EDGETWIN_API_TOKEN") or secrets.token_urlsafe(12)
        gateway_config = GatewayConfig(
            mqtt=mqtt.recast(GatewayMqttSettings),
            api=ApiSection(token=Secret(token)),
            observability=GatewayObservability(),
            server=ServerSection(host="127.0.0.1", port=port),
            devices=[
                ManifestDevice(id=AGENT_DEVICE, sensors=demo_sensors(2.0), site="demo"),
                *simulated,
            ],
        )
        agent_config = AgentConfig(
            agent=AgentSection(device_id=AGENT_DEVICE, state_dir=Path(workdir) / "agent"),
            mqtt=mqtt.recast(AgentMqttSettings),
            sensors=demo_sensors(2.0),
        )
        server = serve(gateway_config)
        stop_agent = threading.Event()
        agent_thread = threading.Thread(
            target=_agent_after_delay,
            args=(agent_config, stop_agent, agent_delay),
            name="demo-agent",
            daemon=True,
        )
        agent_thread.start()
        if duration is not None:
            timer = threading.Timer(duration, lambda: setattr(server, "should_exit", True))
            timer.daemon = True
            timer.start()
        banner = threading.Thread(
            target=_banner_when_serving,
            args=(
                server,
                lambda: _print_banner(
                    embedded.host, embedded.port, port, embedded.protocol, agent_delay, token=token
                ),
            ),
            daemon=True,
        )
        banner.start()
        try:
            server.run()
        finally:
            stop_agent.set()
            agent_thread.join(timeout=10)
        print("\nedgetwin demo stopped.", flush=True)
    return 0


def _agent_after_delay(config: AgentConfig, stop: threading.Event, delay: float) -> None:
    if stop.wait(delay):
        return
    Agent(config).run(stop)


def _banner_when_serving(server: uvicorn.Server, show: Callable[[], None]) -> None:
    """Print the addresses only once the API answers, so that what is printed works at once."""
    deadline = time.monotonic() + 60
    while not server.started:
        if server.should_exit or time.monotonic() > deadline:
            return
        time.sleep(0.05)
    show()


def _print_banner(
    host: str, broker_port: int, api_port: int, protocol: str, agent_delay: float, *, token: str
) -> None:
    edgetwin = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "edgetwin" else "edgetwin"
    lines = [
        "",
        "edgetwin demo is running.",
        f"  broker      mqtt://{host}:{broker_port} (MQTT {protocol})",
        f"  fleet page  http://127.0.0.1:{api_port}/",
        f"  API         http://127.0.0.1:{api_port}/devices   (docs: /docs, metrics: /metrics)",
        f"  API token   {token}   (writes; the page asks for it once per tab)",
        f"  devices     {AGENT_DEVICE} (agent on emulated BME280s, joins in {agent_delay:g} s)"
        " and simulated sim-*",
        "",
        "Watch the fleet from another terminal:",
        f"  {edgetwin} watch --broker mqtt://{host}:{broker_port} --topic 'edgetwin/#'",
    ]
    if shutil.which("mosquitto_sub"):
        lines.append(f"  mosquitto_sub -h {host} -p {broker_port} -t 'edgetwin/#' -v")
    lines += [
        "",
        f"Close the loop: switch {LOOP_DEVICE}'s simulated heater on, and its temperature rises",
        "by up to 6 °C (63 % of it in a minute) on its page:",
        f"  curl -X PATCH http://127.0.0.1:{api_port}/devices/{LOOP_DEVICE}/desired "
        f"-H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' "
        f"-d '{HEATER_ON}'",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)
