"""What the engine needs from a scenario: the shape of `gateway.scenario` (docs/design.md,
'Simulation engine').

The engine codes against these protocols, not against the scenario package, so either side can
change its internals freely; `gateway.scenario.Scenario` satisfies `ScenarioLike` structurally.
A scenario crosses a process boundary (each worker builds its own generator from it), so it
must be picklable.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from edgetwin.agent.contract import Topics

Message = tuple[str, bytes, bool]  # (topic, payload, retain)
PayloadKind = Literal["edgetwin", "flat"]


class StreamSpecLike(Protocol):
    @property
    def index(self) -> int: ...

    @property
    def device(self) -> str: ...

    @property
    def sensor(self) -> str: ...

    @property
    def interval(self) -> float: ...

    @property
    def phase(self) -> float: ...


class GeneratorLike(Protocol):
    def emit(self, index: int, t: float) -> list[Message]: ...

    def streams(self) -> Sequence[StreamSpecLike]: ...

    def inject(self, fault: Any) -> None: ...

    def warm(self) -> None: ...


@runtime_checkable
class PlacingGeneratorLike(Protocol):
    """The generator of a placed run (`EngineController.start(..., placed=True)`): its streams
    are given one device at a time while the run goes on (gateway.scenario.PlacedStreams)."""

    def emit(self, index: int, t: float) -> list[Message]: ...

    def inject(self, fault: Any) -> None: ...

    def warm(self) -> None: ...

    def place(
        self, device: str, keep: Sequence[str], start: Sequence[Any], s_first: float
    ) -> dict[str, int]: ...

    def drive(self, device: str, inputs: Mapping[str, float], at: float) -> int: ...

    def streams(self) -> Sequence[StreamSpecLike]: ...


class ScenarioLike(Protocol):
    @property
    def seed(self) -> int: ...

    def streams(self) -> Sequence[StreamSpecLike]: ...

    def iter_streams(self) -> Iterator[StreamSpecLike]: ...

    def streams_at(self, indices: Collection[int]) -> Mapping[int, StreamSpecLike]: ...

    def resized(self, devices: int) -> ScenarioLike: ...

    def device_count(self) -> int: ...

    def generator(
        self,
        topics: Topics,
        streams: Sequence[int] | None = None,
        payload: PayloadKind = "edgetwin",
    ) -> GeneratorLike: ...
