"""Commands with an answer: the gateway's side of MQTT 5 request/response.

The gateway publishes each `CommandRequest` on the device's command topic with a Response
Topic under the device (`{prefix}/{device}/responses/{gateway id}`) and 16 random bytes of
Correlation Data, and waits for the answer on its one subscription to
`{prefix}/+/responses/{gateway id}`, made at start. Answers are matched by correlation data
alone, so any number of requests may wait at once, for one device or many; an answer must
also come from the device asked (its topic, which the broker's ACL lets only that device
write) and quote the request's id.

A waiting request costs an asyncio future and a dict entry, not a thread: the API's routes
await it on uvicorn's event loop, and the MQTT network thread settles it through
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Final, Literal

import msgspec
from prometheus_client import CollectorRegistry, Counter

from edgetwin.agent.contract import (
    MAX_COMMAND_BYTES,
    ArgName,
    ArgValue,
    CommandId,
    CommandRequest,
    CommandResponse,
    ContractError,
    ParsedTopic,
    Struct,
    Topics,
)
from edgetwin.agent.mqtt import Message, MqttLink

MAX_TIMEOUT: Final = 60.0
"""Longest an API call may wait for a device: a request holds an HTTP connection open, and a
command is an operator's action, answered in milliseconds by a live agent."""
DEFAULT_TIMEOUT: Final = 10.0


class CommandCall(Struct, frozen=True):
    """The body of `POST /devices/{id}/commands/{name}`."""

    args: Annotated[dict[ArgName, ArgValue], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=dict
    )
    id: (
        Annotated[
            CommandId,
            msgspec.Meta(
                description="the command's id: the device runs an id once and answers a "
                "repeat with the same answer; drawn at random when absent"
            ),
        ]
        | None
    ) = None
    timeout: Annotated[
        float,
        msgspec.Meta(gt=0, le=MAX_TIMEOUT, description="seconds to wait for the device's answer"),
    ] = DEFAULT_TIMEOUT


Unanswered = Literal["offline", "timed out", "rejected", "unavailable"]


class CommandRefusal(Struct, frozen=True, omit_defaults=True):
    """Why a command got no answer of "ok" or "failed": the device is offline (504), gave no
    answer in time (504), or rejected it (422: `answer` is the device's, with its reason); or
    the gateway cannot send it now (503)."""

    reason: Unanswered
    detail: str
    answer: CommandResponse | None = None


class CommandTimeout(Exception):
    """No answer from the device within the call's timeout."""


@dataclass(frozen=True, slots=True)
class _Waiting:
    device: str
    id: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[CommandResponse]


def _settle(future: asyncio.Future[CommandResponse], answer: CommandResponse) -> None:
    if not future.done():  # a repeat of the answer, or the caller gave up already
        future.set_result(answer)


class CommandClient:
    """Sends commands and hands each device's answer to the call that waits for it."""

    def __init__(
        self,
        link: MqttLink,
        topics: Topics,
        requester: str,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.link = link
        self.topics = topics
        self.requester = requester
        self.clock = clock
        self._waiting: dict[bytes, _Waiting] = {}
        self._lock = threading.Lock()
        self.late = 0
        """Answers nobody waited for any more (their call timed out), or for another process."""
        self.outcomes = Counter(
            "edgetwin_commands",
            "Commands sent to devices through the API, by outcome: the device's answer (ok, "
            "rejected, failed), or offline, timed_out, unavailable",
            ["outcome"],
            registry=registry,
        )

    @property
    def response_filter(self) -> str:
        return self.topics.all_responses(self.requester)

    def start(self) -> None:
        """Subscribe to this gateway's answers, now and at every reconnection."""
        self.link.subscribe([self.response_filter], qos=1)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def count(self, outcome: str) -> None:
        self.outcomes.labels(outcome.replace(" ", "_")).inc()

    async def call(
        self,
        device: str,
        name: str,
        args: Mapping[str, bool | int | float | str],
        command_id: str | None,
        within: float,
    ) -> CommandResponse:
        """Send command `name` to `device` and return its answer; CommandTimeout when none
        comes `within` seconds. The request's deadline is the same moment: a device that gets
        it later does not run it. PublishError when the link refuses it."""
        loop = asyncio.get_running_loop()
        request = CommandRequest(
            device=device,
            id=command_id or secrets.token_hex(16),
            deadline=self.clock() + within,
            args=dict(args),
        )
        correlation = secrets.token_bytes(16)
        waiting = _Waiting(device, request.id, loop, loop.create_future())
        with self._lock:
            self._waiting[correlation] = waiting
        try:
            self.link.publish(
                self.topics.command(device, name),
                request.encode(),
                qos=1,
                response_topic=self.topics.response(device, self.requester),
                correlation_data=correlation,
                # The broker drops a request it could not deliver in time (a persistent
                # session's queue, kept while the agent is away), rather than hand it over late.
                expiry=math.ceil(within),
            )
            try:
                async with asyncio.timeout(within):
                    answer = await waiting.future
            except TimeoutError:
                self.count("timed out")
                raise CommandTimeout(f"no answer from {device!r} within {within:g} s") from None
        finally:
            with self._lock:
                self._waiting.pop(correlation, None)
        self.count(answer.status)
        return answer

    def on_response(self, parsed: ParsedTopic, message: Message) -> None:
        """An answer on this gateway's response topic (MQTT network thread). ContractError
        for one that is malformed or not from the device asked: the caller counts it."""
        correlation = message.correlation_data
        with self._lock:
            waiting = None if correlation is None else self._waiting.get(correlation)
        if waiting is None:
            self.late += 1
            return
        if len(message.payload) > MAX_COMMAND_BYTES:
            raise ContractError(f"answer of {len(message.payload)} bytes")
        answer = CommandResponse.decode(message.payload)
        if parsed.device != waiting.device or answer.device != waiting.device:
            raise ContractError(
                f"answer from {parsed.device!r} to a command for {waiting.device!r}"
            )
        if answer.id != waiting.id:
            raise ContractError(f"answer quotes id {answer.id!r}; the request's was {waiting.id!r}")
        waiting.loop.call_soon_threadsafe(_settle, waiting.future, answer)
