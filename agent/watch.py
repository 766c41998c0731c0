"""`edgetwin watch`: a subscriber for people, so the demo needs no mosquitto-clients."""

from __future__ import annotations

import sys
import threading

from edgetwin.agent.config import MqttSettings
from edgetwin.agent.mqtt import Message, MqttLink


def watch(host: str, port: int, topic_filters: list[str], count: int | None = None) -> int:
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

    link = MqttLink(MqttSettings(host=host, port=port, protocol="3.1.1"), on_message=show)
    link.subscribe(topic_filters, qos=0)
    link.start()
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        link.close()
    return 0
