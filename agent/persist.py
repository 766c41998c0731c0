"""Small durable facts of an agent (boot counter, stream sequence numbers) in one JSON file."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class AgentMemory:
    boot: int = 0
    seq: dict[str, int] = field(default_factory=dict)


class MemoryFile:
    """Atomic replace on write, so a power cut leaves either the old file or the new one."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def load(self) -> AgentMemory:
        if self.path is None or not self.path.exists():
            return AgentMemory()
        try:
            data = json.loads(self.path.read_text())
            return AgentMemory(
                boot=int(data["boot"]), seq={str(k): int(v) for k, v in data["seq"].items()}
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Starting over is better than refusing to run; the boot counter restarts, which
            # readers see as a new agent, not as a stale one.
            log.error(
                "agent memory unreadable, starting fresh",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return AgentMemory()

    def save(self, memory: AgentMemory) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"boot": memory.boot, "seq": memory.seq}).encode()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".memory-")
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
