"""pytest fixtures for real agents on emulated chips and a running gateway; part of the
edgetwin plugin."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pytest

from edgetwin.testing.broker_fixtures import broker_or_default

if TYPE_CHECKING:
    from edgetwin.testing.agent import EmulatedAgent
    from edgetwin.testing.broker import Broker
    from edgetwin.testing.gateway import RunningGateway


class AgentFactory(Protocol):
    """Call with the agent's config as a dict (the agent TOML's tables) and/or `device_id`."""

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        device_id: str | None = None,
        broker: Broker | None = None,
        mode: Literal["thread", "process"] = "thread",
        state_dir: Path | None = None,
        wait: bool = True,
    ) -> EmulatedAgent: ...


@pytest.fixture
def edgetwin_agent(request: pytest.FixtureRequest) -> Iterator[AgentFactory]:
    """Start real edgetwin agents on emulated chips, on `edgetwin_broker` unless given
    `broker=`; each is stopped and its temporary state removed at the test's end.

        agent = edgetwin_agent(device_id="fridge-1")            # one BME280, a reading a second
        agent = edgetwin_agent({"agent": {"device_id": "pi"},
                                "sensors": {"env": {"driver": "bme280", "interval": 0.2}}},
                               mode="process")                  # a real process: kill() works
        agent.nack("env"); agent.unplug("env"); agent.clear_faults("env")
        agent.outbox.pending()

    The `[mqtt]` table comes from the broker (with an ACL, the device's own identity). It
    returns once the agent's birth is on the broker (`wait=False`: at once).
    """
    from edgetwin.testing.agent import EmulatedAgent

    with contextlib.ExitStack() as stack:

        def make(
            config: Mapping[str, Any] | None = None,
            *,
            device_id: str | None = None,
            broker: Broker | None = None,
            mode: Literal["thread", "process"] = "thread",
            state_dir: Path | None = None,
            wait: bool = True,
        ) -> EmulatedAgent:
            settings = dict(config or {})
            agent_table = dict(settings.get("agent", {}))
            if device_id is not None:
                agent_table["device_id"] = device_id
            if "device_id" not in agent_table:
                raise pytest.UsageError("edgetwin_agent needs device_id= or [agent] device_id")
            settings["agent"] = agent_table
            on = broker_or_default(request, broker)
            agent = EmulatedAgent(
                on.device_endpoint(agent_table["device_id"]),
                settings,
                mode=mode,
                state_dir=state_dir,
                observer=on.reader_endpoint,
            )
            stack.callback(agent.close)
            agent.start(wait=wait)
            return agent

        yield make


class GatewayFactory(Protocol):
    """Call with the manifest (`devices`, each a dict as in the gateway's `[[devices]]`)."""

    def __call__(
        self,
        devices: Sequence[Mapping[str, Any]] = (),
        *,
        broker: Broker | None = None,
        token: str | None = None,
        config: Mapping[str, Any] | None = None,
        mode: Literal["thread", "process"] = "thread",
    ) -> RunningGateway: ...


@pytest.fixture
def edgetwin_gateway(request: pytest.FixtureRequest) -> Iterator[GatewayFactory]:
    """Start a gateway (the digital twin and its REST API) on `edgetwin_broker` unless given
    `broker=`, stopped at the test's end.

        fridge = {"id": "fridge-1", "sensors": {"cabinet": {"driver": "bme280"}}}
        gateway = edgetwin_gateway([fridge])
        gateway.client.devices()                 # its API, with its token (gateway.token)
        gateway.client.put_desired("fridge-1", {...}, if_match=0)

    Manifest devices without a live agent are simulated by the gateway on the same topics.
    """
    from edgetwin.testing.gateway import RunningGateway

    with contextlib.ExitStack() as stack:

        def make(
            devices: Sequence[Mapping[str, Any]] = (),
            *,
            broker: Broker | None = None,
            token: str | None = None,
            config: Mapping[str, Any] | None = None,
            mode: Literal["thread", "process"] = "thread",
        ) -> RunningGateway:
            on = broker_or_default(request, broker)
            gateway = RunningGateway(
                on.gateway_endpoint, devices, token=token, config=config, mode=mode
            )
            stack.callback(gateway.stop)
            gateway.start()
            return gateway

        yield make
