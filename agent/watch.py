"""`edgetwin watch`: a subscriber for people, so the demo needs no mosquitto-clients."""

from __future__ import annotations

import sys
import threading

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.mqtt import Message, MqttLink


def watch(
    settings: MqttSettings,
    topic_filters: list[str],
    count: int | None = None,
    *,
    connect_timeout: float = 10.0,
) -> int:
    """Print every message under `topic_filters` until `count` of them or Ctrl-C; the exit
    status (1, with the reason on stderr, when the broker cannot be reached)."""
    done = threading.Event()
    seen = 0
    lock = threading.Lock()

    def show(message: Message) -> None:
        nonlocal seen
        with lock:
            if done.is_set():
                return
            flag = " (retained)" if message.retain else ""
            sys.stdout.write(f"{message.topic}{flag} {message.payload.decode(errors='replace')}\n")
            sys.stdout.flush()
            seen += 1
            if count is not None and seen >= count:
                done.set()

    link = MqttLink(settings, on_message=show)
    link.subscribe(topic_filters, qos=0)
    link.start()
    try:
        error = link.wait_attempt(connect_timeout)
        if error is not None:
            print(f"edgetwin watch: {error}", file=sys.stderr)
            return 1
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        link.close()
    return 0
