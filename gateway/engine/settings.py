"""The engine's settings: one `[engine]` section, validated with msgspec.convert."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from edgetwin.agent.config import Secret, Section

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]


class EngineSettings(Section, frozen=True):
    """Defaults for `EngineController.start` and the bounds that keep a worker's memory flat.

    Every bound exists because the broker or the machine may fall behind: the engine then skips
    and counts ticks rather than queueing them.
    """

    # Worker processes, or 0 to run in the gateway's own process (a thread), or "auto": in
    # process up to `in_process_rate` readings a second, else one process per
    # `process_rate` readings a second, at most one per core (see `choose_workers`).
    workers: Annotated[int, msgspec.Meta(ge=0, le=64)] | Literal["auto"] = "auto"
    # A thread of the gateway holds this many readings a second beside the API without
    # pinning its core (about 4 % of a core per 1,000/s: bench/README.md).
    in_process_rate: Annotated[float, msgspec.Meta(ge=0)] = 2000.0
    # One worker process held 50,000 readings/s at QoS 0 on ~0.8 core; 30,000 a process
    # leaves each some headroom for the broker beside it on a small machine.
    process_rate: Annotated[float, msgspec.Meta(gt=0)] = 30000.0
    # Scenario files that POST /engine/start may name, relative to this directory; None: the
    # API starts only the default fleet.
    scenarios_dir: Path | None = None
    # Each worker is a process of ~40 MB: an API call must not be able to start dozens.
    max_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 8
    qos: Literal[0, 1] = 0
    payload: Literal["edgetwin", "flat"] = "edgetwin"
    max_devices: PositiveInt = 200_000
    # A tick this late (wall seconds past its deadline, or one interval if shorter) is skipped
    # and counted, never published late in a burst.
    max_lateness: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    # Bytes a worker lets wait for the socket (encoded, not yet sent). Past it, due ticks are
    # skipped and counted: this is what bounds memory while the broker is stalled.
    max_backlog_bytes: Annotated[int, msgspec.Meta(ge=65_536)] = 4 * 1024 * 1024
    # QoS 1: messages published and not yet acknowledged, per worker, and never more than the
    # broker's MQTT 5 Receive Maximum (mosquitto announces its `max_inflight_messages`, 20 by
    # default). Nothing queues behind the window: due ticks wait for room up to
    # `max_lateness`, then are skipped and counted.
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=65_535)] = 1000
    # Due ticks handled in one pass before the worker looks at its socket and commands again.
    batch_limit: PositiveInt = 2000
    # A worker wakes at most this often (seconds): ticks falling due in between go out as one
    # batch with one send(). Waking for every deadline of a 10,000-device fleet cost ~50 µs a
    # message in select() and bookkeeping; this adds at most `tick` to the lateness.
    tick: Annotated[float, msgspec.Meta(ge=0, le=0.1)] = 0.005
    stats_interval: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    start_timeout: Annotated[float, msgspec.Meta(gt=0)] = 20.0
    # The engine's own broker identity (EDGETWIN_ENGINE_USERNAME, _PASSWORD), for its workers
    # and the stand-ins: a broker ACL lets it write simulated telemetry and labels only, so
    # its password, handed to every worker process, cannot write twins or desired configs.
    # None: the engine logs in as `[mqtt]` does.
    username: str | None = None
    password: Secret | None = None

    def choose_workers(self, rate: float) -> int:
        """Worker processes for a fleet asking `rate` readings a second (0: in process)."""
        if self.workers != "auto":
            return self.workers
        if rate <= self.in_process_rate:
            return 0
        cores = os.cpu_count() or 1
        return max(1, min(math.ceil(rate / self.process_rate), cores, self.max_workers))

    def __post_init__(self) -> None:
        if self.password is not None and self.username is None:
            raise ValueError("engine: password needs username")
        if isinstance(self.workers, int) and self.workers > self.max_workers:
            raise ValueError(f"engine: workers is above max_workers ({self.max_workers})")
