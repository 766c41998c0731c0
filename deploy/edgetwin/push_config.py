"""The Compose stack's config pusher (service config-pusher): every PUSH_EVERY seconds, a new
desired config for each agent of the stack, alternating the `env` sensor's interval.

Each push is a trace: the gateway's `config.push` span, its context carried to the agent in
MQTT 5 user properties, and the agent's `config.apply` span; Grafana's trace dashboard finds
them in Tempo. The fleet dashboard's config sync shows them pending until the agent applies
them, longer for agent-2 while it is stopped. Standard library only: it runs in the gateway's
image with its token (EDGETWIN_API_TOKEN).
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request

GATEWAY = os.environ.get("GATEWAY_URL", "http://gateway:8080")
DEVICES = os.environ.get("PUSH_DEVICES", "greenhouse-01,greenhouse-02").split(",")
EVERY = float(os.environ.get("PUSH_EVERY", "60"))
INTERVALS = (2.0, 3.0)


def push(device: str, interval: float, token: str) -> str:
    body = json.dumps({"sensors": {"env": {"interval": interval}}}).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL is the stack's own gateway
        f"{GATEWAY}/devices/{device}/desired",
        data=body,
        method="PATCH",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return f"{response.status}"
    except (urllib.error.URLError, TimeoutError) as exc:  # the gateway may be starting
        return f"failed: {exc}"


def main() -> int:
    token = os.environ["EDGETWIN_API_TOKEN"]
    turn = 0
    while True:
        interval = INTERVALS[turn % len(INTERVALS)]
        for device in DEVICES:
            print(f"push {device} env.interval={interval}: {push(device, interval, token)}")
        sys.stdout.flush()
        turn += 1
        time.sleep(EVERY)


if __name__ == "__main__":
    sys.exit(main())
