"""Benchmark of the agent's footprint: resident memory and CPU at 1 Hz, beside the floor.

Run: ``.venv/bin/python bench/agent_bench.py`` (``--help`` for options). Prints tables; asserts
nothing. Bounded in time: about 70 s by default (60 s run, start, stop, breakdown).

1. A private mosquitto on a free port (`gateway.broker.MosquittoBroker`); the agent as systemd
   runs it (``python -m edgetwin agent --config F``) with 10 emulated BME280s at 1 Hz (buses
   1..5, addresses 0x76 and 0x77); beside it, started at the same moment and measured the same
   way, the floor: ``python -c "import paho.mqtt.client, gpiozero, smbus2, prometheus_client"``
   then sleeping, and a bare interpreter for reference. A subscriber counts the telemetry, so a
   quiet agent cannot pass for a light one.
2. Every second: VmRSS, RssAnon and RssFile from /proc/PID/status, PSS from
   /proc/PID/smaps_rollup, utime + stime from /proc/PID/stat. Steady state is the last
   ``--window`` seconds: median RSS, and CPU time over wall time in % of one core.
3. Where the memory goes: a fresh interpreter imports what the agent imports, step by step,
   printing RSS after each, and each package alone on a bare interpreter. The agent imports
   gpiozero only for GPIO sensors and prometheus_client only with a prometheus_port: the floor
   has both, the agent here neither. tracemalloc is no help here: most of the difference is
   native code of compiled packages (msgspec; pydantic-core for the gateway), outside Python's
   allocator.

Bytecode: every child runs with .pyc files, compiled once into a private cache
(PYTHONPYCACHEPREFIX), as a pip-installed venv has them, even where PYTHONDONTWRITEBYTECODE is
set; the breakdown also shows the agent's imports compiled from source, which is what a
read-only venv without .pyc files costs at every start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from procstat import cpu_seconds, pss_bytes, status_kib

from edgetwin.gateway.broker import MosquittoBroker

DEVICE = "bench-pi"
FLOOR_IMPORTS = "paho.mqtt.client, gpiozero, smbus2, prometheus_client"
GOAL_RATIO = 1.25
GOAL_CPU = 1.0  # % of one core


# -- sampling /proc ----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # seconds since the start of the run
    rss: int  # kB
    anon: int
    file: int
    pss: int | None
    cpu: float  # seconds of CPU time (user + system) so far
    threads: int


@dataclass
class Watched:
    label: str
    process: subprocess.Popen[bytes]
    samples: list[Sample] = field(default_factory=list)

    def sample(self, t: float) -> None:
        if self.process.poll() is not None:
            return
        status = status_kib(self.process.pid, ("VmRSS", "RssAnon", "RssFile", "Threads"))
        cpu = cpu_seconds(self.process.pid)
        pss = pss_bytes(self.process.pid) // 1024 or None
        if "VmRSS" not in status:
            return  # exited between poll() and reading
        self.samples.append(
            Sample(
                t,
                status["VmRSS"],
                status.get("RssAnon", 0),
                status.get("RssFile", 0),
                pss,
                cpu,
                status.get("Threads", 0),
            )
        )

    def steady(self, since: float) -> dict[str, float]:
        window = [s for s in self.samples if s.t >= since]
        if len(window) < 2:
            return {}
        first, last = window[0], window[-1]
        pss = [s.pss for s in window if s.pss is not None]
        return {
            "rss": statistics.median(s.rss for s in window),
            "anon": statistics.median(s.anon for s in window),
            "file": statistics.median(s.file for s in window),
            "pss": statistics.median(pss) if pss else float("nan"),
            "cpu": 100.0 * (last.cpu - first.cpu) / (last.t - first.t),
            "threads": last.threads,
            "rss_early": self.samples[min(4, len(self.samples) - 1)].rss,
            "rss_last": last.rss,
            "seconds": last.t - first.t,
        }


# -- the run -----------------------------------------------------------------------------------


def agent_config(directory: Path, broker: MosquittoBroker, sensors: int) -> Path:
    lines = [
        "[agent]",
        f'device_id = "{DEVICE}"',
        f'state_dir = "{directory / "state"}"',
        "[mqtt]",
        f'host = "{broker.host}"',
        f"port = {broker.port}",
        f'protocol = "{broker.protocol}"',
        "[observability]",
        'log_level = "WARNING"',
    ]
    for index in range(sensors):
        bus, address = 1 + (index // 2) % 5, (0x76, 0x77)[index % 2]
        lines += [
            f"[sensors.env{index}]",
            'driver = "bme280"',
            f"bus = {bus}",
            f"address = {address:#04x}",
            "interval = 1",
            'backend = "emulated"',
        ]
    path = directory / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Counter:
    """Counts the agent's telemetry on the broker, with arrival times."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.times: list[float] = []
        self._lock = threading.Lock()
        protocol = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.subscribe(f"edgetwin/{DEVICE}/telemetry/#", qos=0)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.times.append(time.monotonic())

    def since(self, start: float) -> int:
        with self._lock:
            return sum(1 for t in self.times if t >= start)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(
    args: argparse.Namespace, workdir: Path, env: dict[str, str]
) -> tuple[list[Watched], dict[str, float]]:
    python = sys.executable
    with MosquittoBroker() as broker:
        config = agent_config(workdir, broker, args.sensors)
        counter = Counter(broker)
        log = (workdir / "agent.log").open("wb")
        sleep = f"import time; time.sleep({args.duration + 60})"
        commands = {
            "python, bare (reference)": [python, "-c", sleep],
            f"floor: python + {FLOOR_IMPORTS}": [python, "-c", f"import {FLOOR_IMPORTS}; {sleep}"],
            f"edgetwin agent, {args.sensors} sensors at 1 Hz": [
                python,
                "-m",
                "edgetwin",
                "agent",
                "--config",
                str(config),
            ],
        }
        watched: list[Watched] = []
        start = time.monotonic()
        try:
            for label, command in commands.items():
                out = log if "agent" in label else subprocess.DEVNULL
                process = subprocess.Popen(command, stdout=out, stderr=out, env=env)
                watched.append(Watched(label, process))
            next_tick = start
            while (now := time.monotonic()) - start < args.duration:
                for each in watched:
                    each.sample(now - start)
                print(".", end="", file=sys.stderr, flush=True)
                next_tick += 1.0
                time.sleep(max(0.0, next_tick - time.monotonic()))
            print(file=sys.stderr)
            window_start = start + args.duration - args.window
            traffic = {
                "messages": counter.since(window_start),
                "seconds": time.monotonic() - window_start,
            }
        finally:
            for each in watched:
                if each.process.poll() is None:
                    each.process.send_signal(signal.SIGTERM)
            for each in watched:
                try:
                    each.process.wait(15)
                except subprocess.TimeoutExpired:
                    each.process.kill()
                    each.process.wait()
            counter.close()
            log.close()
        agent = watched[-1]
        traffic["exit"] = float(agent.process.returncode)
        if agent.process.returncode != 0:
            tail = (workdir / "agent.log").read_text(errors="replace")[-2000:]
            print(f"agent exited with {agent.process.returncode}:\n{tail}", file=sys.stderr)
    return watched, traffic


# -- where the memory goes ---------------------------------------------------------------------

# Cumulative, in the order the agent's own imports pull them in; each line adds its modules.
IMPORT_STEPS: Sequence[tuple[str, str]] = (
    ("interpreter + site", ""),
    ("paho.mqtt.client (+ ssl, socket, uuid)", "paho.mqtt.client"),
    ("smbus2", "smbus2"),
    ("sqlite3", "sqlite3"),
    ("msgspec", "msgspec"),
    ("edgetwin.agent.contract (the wire models)", "edgetwin.agent.contract"),
    ("edgetwin.agent.config (settings models)", "edgetwin.agent.config"),
    (
        "edgetwin.hardware (drivers, emulators, signal models)",
        "edgetwin.hardware, edgetwin.hardware.registry",
    ),
    (
        "edgetwin.agent.runtime, edgetwin.agent.cli (the rest of the agent)",
        "edgetwin.agent.runtime, edgetwin.agent.cli",
    ),
    ("-- not loaded by this agent: gpiozero", "gpiozero"),
    ("-- not loaded by this agent: prometheus_client", "prometheus_client"),
)

STEPS_CHILD = textwrap.dedent(
    """
    import json, sys
    def rss():
        values = {}
        with open("/proc/self/status") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    values[key] = int(rest.split()[0])
        return values
    rows = []
    for label, modules in json.loads(sys.argv[1]):
        if modules:
            exec("import " + modules)
        rows.append([label, rss(), len(sys.modules)])
    print(json.dumps(rows))
    """
)

ISOLATED: Sequence[str] = (
    "paho.mqtt.client",
    "ssl",
    "sqlite3",
    "msgspec",
    "pydantic",
    "edgetwin.agent.contract",
    "edgetwin.hardware",
    "importlib.metadata",
    "edgetwin.agent.cli",
    "gpiozero",
    "prometheus_client",
)

RSS_CHILD = textwrap.dedent(
    """
    import re, sys
    if sys.argv[1]:
        exec("import " + sys.argv[1])
    status = open("/proc/self/status").read()
    print(re.search(r"VmRSS:\\s+(\\d+)", status).group(1))
    """
)


def bytecode_env(cache: Path) -> dict[str, str]:
    """The environment of every child: .pyc files in a private cache, written on first use."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def warm_bytecode(python: str, env: dict[str, str]) -> None:
    """Compile what the children will import, so that none of them compiles from source."""
    code = (
        "import pkgutil, importlib, agent, hardware, edgetwin\n"
        "for pkg in (agent, hardware, edgetwin):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        f"import {FLOOR_IMPORTS}, sqlite3, gpiozero.pins.mock\n"
    )
    subprocess.run([python, "-c", code], env=env, check=True, timeout=120, capture_output=True)


def import_steps(python: str, env: dict[str, str]) -> list[tuple[str, dict[str, int], int]]:
    result = subprocess.run(
        [python, "-c", STEPS_CHILD, json.dumps(IMPORT_STEPS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return [(label, values, modules) for label, values, modules in json.loads(result.stdout)]


def rss_after_import(python: str, modules: str, env: dict[str, str]) -> int:
    result = subprocess.run(
        [python, "-c", RSS_CHILD, modules],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    return int(result.stdout)


# -- output ------------------------------------------------------------------------------------


def mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line.format(*row))


def report(args: argparse.Namespace, watched: list[Watched], traffic: dict[str, float]) -> None:
    since = args.duration - args.window
    stats = [(w.label, w.steady(since)) for w in watched]
    rows = []
    for label, s in stats:
        if not s:
            rows.append((label, "exited", "", "", "", "", "", ""))
            continue
        rows.append(
            (
                label,
                mib(s["rss"]),
                mib(s["anon"]),
                mib(s["file"]),
                mib(s["pss"]),
                f"{s['cpu']:.2f}",
                f"{int(s['threads'])}",
                f"{mib(s['rss_early'])} -> {mib(s['rss_last'])}",
            )
        )
    print(
        f"\nSteady state over the last {args.window:.0f} s of {args.duration:.0f} s "
        "(medians of 1 s samples; CPU = CPU time / wall time, % of one core)"
    )
    table(
        rows,
        ("process", "RSS MiB", "anon", "file", "PSS MiB", "CPU %", "threads", "RSS 5 s -> end"),
    )
    floor, agent = stats[1][1], stats[2][1]
    messages = traffic["messages"]
    rate = messages / traffic["seconds"] if traffic["seconds"] else 0.0
    print(
        f"\ntelemetry received in the window: {messages:.0f} messages, {rate:.2f}/s "
        f"(expected {args.sensors}/s); agent exit status {traffic['exit']:.0f}"
    )
    if floor and agent:
        ratio = agent["rss"] / floor["rss"]
        anon_ratio = agent["anon"] / floor["anon"]
        verdict_rss = "meets" if ratio <= GOAL_RATIO else "MISSES"
        verdict_cpu = "meets" if agent["cpu"] < GOAL_CPU else "MISSES"
        print(
            f"RSS agent / floor: {ratio:.2f} ({verdict_rss} the goal of <= {GOAL_RATIO}); "
            f"anonymous memory only: {anon_ratio:.2f}\n"
            f"agent CPU: {agent['cpu']:.2f} % of one core ({verdict_cpu} the goal of "
            f"< {GOAL_CPU} %); floor: {floor['cpu']:.2f} %"
        )


def report_breakdown(python: str, env: dict[str, str], agent_rss: float | None) -> None:
    steps = import_steps(python, env)
    rows = []
    previous = steps[0][1]
    for label, values, modules in steps:
        rows.append(
            (
                label,
                mib(values["VmRSS"]),
                f"+{mib(values['VmRSS'] - previous['VmRSS'])}",
                f"+{mib(values['RssAnon'] - previous['RssAnon'])}",
                f"+{mib(values['RssFile'] - previous['RssFile'])}",
                str(modules),
            )
        )
        previous = values
    print("\nWhere the memory goes: RSS after each import, cumulative, in a fresh interpreter")
    table(rows, ("import", "RSS MiB", "delta", "anon", "file", "modules"))
    imported = next(v for label, v, _ in steps if label.startswith("edgetwin.agent.runtime"))
    if agent_rss is not None:
        print(
            f"the running agent holds {mib(agent_rss - imported['VmRSS'])} MiB beyond its "
            "imports (threads, SQLite, sensors and emulators, MQTT session, lazy imports)"
        )

    bare = rss_after_import(python, "", env)
    isolated = [(name, rss_after_import(python, name, env) - bare) for name in ISOLATED]
    print(f"\nEach alone on a bare interpreter ({mib(bare)} MiB); overlaps, so do not add up")
    table([(name, f"+{mib(kb)}") for name, kb in isolated], ("import", "RSS MiB"))

    source_env = dict(env)
    source_env.pop("PYTHONPYCACHEPREFIX", None)
    source_env["PYTHONDONTWRITEBYTECODE"] = "1"
    with tempfile.TemporaryDirectory() as empty:
        source_env["PYTHONPYCACHEPREFIX"] = empty  # nothing cached: compile from source
        cold = rss_after_import(python, "edgetwin.agent.cli", source_env)
    warm = rss_after_import(python, "edgetwin.agent.cli", env)
    print(
        f"\nimport edgetwin.agent.cli with .pyc files: {mib(warm)} MiB; compiled from source "
        f"(a read-only venv without .pyc): {mib(cold)} MiB (+{mib(cold - warm)})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the run")
    parser.add_argument("--window", type=float, default=45.0, help="steady-state seconds")
    parser.add_argument("--sensors", type=int, default=10, help="emulated BME280s at 1 Hz")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the import breakdown")
    args = parser.parse_args(argv)
    args.window = min(args.window, args.duration - 2)
    if not MosquittoBroker.available():
        print("agent bench: the mosquitto binary is needed (apt-get install mosquitto)")
        return 1
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    try:
        env = bytecode_env(workdir / "pycache")
        warm_bytecode(sys.executable, env)
        watched, traffic = run(args, workdir, env)
        print(
            f"agent bench: python {platform.python_version()} ({sys.executable}), "
            f"{platform.machine()}, {os.cpu_count()} CPUs, kernel {platform.release()}"
        )
        report(args, watched, traffic)
        if not args.no_breakdown:
            agent = watched[-1].steady(args.duration - args.window)
            report_breakdown(sys.executable, env, agent.get("rss"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntook {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
