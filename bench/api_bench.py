"""The gateway's memory around one large unauthenticated request body.

    .venv/bin/python bench/api_bench.py [--mb 200] [--chunked]

A private mosquitto and an `edgetwin gateway` process (with a token). Prints the gateway's PSS
(/proc/PID/smaps_rollup) before, the status and time of its answer to a POST /devices of
`--mb` megabytes without a token, and its PSS after. The body is streamed until the gateway
answers; a gateway that reads bodies before checking the token answers only after the last
byte. Nothing is asserted; every wait is bounded.
"""

from __future__ import annotations

import argparse
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from procstat import tree_pss_bytes

from edgetwin.gateway.broker import MosquittoBroker, free_port

REPO = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024


def wait_ready(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/devices", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"gateway at {url} not up within {timeout} s")


def post_unauthenticated(port: int, size: int, chunked: bool) -> tuple[str, int, float]:
    """Stream a `size`-byte body until the gateway answers: its status line, bytes sent, s."""
    started = time.monotonic()
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
        sock.sendall(
            f"POST /devices HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n".encode()
        )
        block = b" " * CHUNK
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:
                sock.sendall(f"{CHUNK:x}\r\n".encode() + block + b"\r\n" if chunked else block)
                sent += CHUNK
            if chunked and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(120)
        answer = sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    return answer, sent, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="body size in MB")
    parser.add_argument("--chunked", action="store_true", help="no Content-Length")
    args = parser.parse_args()
    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        config = Path(tmp) / "gateway.toml"
        config.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\n\n'
            f'[server]\nhost = "127.0.0.1"\nport = {port}\n\n[api]\ntoken = "bench-token"\n'
        )
        process = subprocess.Popen(
            [sys.executable, "-m", "edgetwin", "gateway", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(f"http://127.0.0.1:{port}")
            before = tree_pss_bytes(process.pid) // 1024
            answer, sent, seconds = post_unauthenticated(port, args.mb * 1024 * 1024, args.chunked)
            after = tree_pss_bytes(process.pid) // 1024
        finally:
            process.terminate()
            process.wait(timeout=30)
    mb = 1024
    print(f"gateway PSS before: {before / mb if before else float('nan'):.1f} MB")
    print(f"answer: {answer!r} after {seconds:.2f} s, {sent / 1024 / 1024:.1f} MB of the body sent")
    print(f"gateway PSS after:  {after / mb if after else float('nan'):.1f} MB")


if __name__ == "__main__":
    main()
