"""The `edgetwin` command.

It sits above agent, gateway and hardware and imports each lazily, so that `edgetwin agent`
on a Raspberry Pi never loads FastAPI, uvicorn or the gateway.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edgetwin.connection import add_connection_arguments

if TYPE_CHECKING:
    from edgetwin.agent.config import MqttSettings
    from edgetwin.gateway.scenario.model import AutoShard, Scenario, Shard


def _add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = commands.add_parser(
        "simulate",
        help="play a scenario to a broker in real time (the scale engine), or with --virtual "
        "faster than real time into a file or a broker",
    )
    simulate.add_argument("--scenario", type=Path, default=None, help="scenario TOML file")
    simulate.add_argument(
        "--devices", type=int, default=None, help="resize the fleet (default scenario: 10)"
    )
    simulate.add_argument(
        "--virtual", action="store_true", help="virtual time: as fast as the machine allows"
    )
    simulate.add_argument("--start", default=None, help="ISO 8601 start (UTC without offset)")
    simulate.add_argument(
        "--duration",
        default=None,
        help="e.g. 3600, 90m, 1d (virtual: default 1h; real time: until Ctrl-C)",
    )
    simulate.add_argument(
        "--out", type=Path, default=None, help="JSON lines file to write (or a broker, below)"
    )
    simulate.add_argument("--prefix", default=None, help="topic prefix (default: edgetwin)")
    simulate.add_argument("--topic", default=None, help="telemetry topic template")
    simulate.add_argument("--payload", choices=["edgetwin", "flat"], default="edgetwin")
    simulate.add_argument("--qos", type=int, choices=[0, 1], default=1, help="with --broker")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    simulate.add_argument(
        "--workers", type=int, default=2, help="real time: worker processes (default 2)"
    )
    simulate.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="real time: serve the engine's Prometheus metrics on this port while it runs",
    )
    simulate.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address for --metrics-port (0.0.0.0 in a container)",
    )
    simulate.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="play the K-th (from 0) of N shares of the fleet, as one of N replicas, or with "
        "auto/N the lowest share no other replica has claimed on the broker (default: "
        "EDGETWIN_SHARD, or EDGETWIN_SHARD_COUNT with K the host name's -K ordinal)",
    )
    simulate.add_argument(
        "--run",
        default=None,
        metavar="NAME",
        help="with --shard auto/N: the name the replicas of one fleet claim their shares "
        "under (default: the scenario file's name, or 'default')",
    )
    add_connection_arguments(simulate)

    merge = commands.add_parser(
        "merge",
        help="merge the --virtual files of a fleet's shards, given in shard order, into the "
        "file one process writes",
    )
    merge.add_argument("files", type=Path, nargs="+", metavar="SHARD_FILE")
    merge.add_argument("--out", type=Path, required=True, help="JSON lines file to write")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetwin", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--version", action="version", version=f"edgetwin {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = commands.add_parser("agent", help="run the device agent (systemd service)")
    agent.add_argument("--config", type=Path, required=True, help="agent TOML file")

    gateway = commands.add_parser("gateway", help="run the twin gateway (FastAPI)")
    gateway.add_argument("--config", type=Path, required=True, help="gateway TOML file")

    demo = commands.add_parser(
        "demo", help="embedded broker + gateway + one agent, nothing to configure"
    )
    demo.add_argument("--api-port", type=int, default=None, help="API port (default: a free one)")
    demo.add_argument("--devices", type=int, default=4, help="simulated devices beside the agent's")
    demo.add_argument("--duration", type=float, default=None, help="stop after so many seconds")
    demo.add_argument(
        "--agent-delay", type=float, default=5.0, help="seconds before the agent joins"
    )
    demo.add_argument(
        "--broker",
        choices=["auto", "mosquitto", "inprocess"],
        default="auto",
        help="embedded broker: the mosquitto binary when installed (auto), or amqtt in-process",
    )

    _add_simulate(commands)

    sensors = commands.add_parser("sensors", help="list drivers, probe I2C buses, read a sensor")
    sensor_commands = sensors.add_subparsers(
        dest="sensors_command", required=True, metavar="ACTION"
    )
    sensor_commands.add_parser("list", help="supported drivers with their quantities and units")
    probe = sensor_commands.add_parser("probe", help="scan the I2C buses and name the known chips")
    probe.add_argument("--dev-dir", type=Path, default=Path("/dev"), help=argparse.SUPPRESS)
    read = sensor_commands.add_parser("read", help="take one reading and print it with units")
    read.add_argument("driver", help="driver name, see 'edgetwin sensors list'")
    read.add_argument("--backend", choices=["auto", "real", "emulated"], default="auto")
    read.add_argument("--bus", type=int, default=1, help="I2C bus number")
    read.add_argument("--address", type=lambda text: int(text, 0), default=None, help="e.g. 0x76")
    read.add_argument("--pin", action="append", metavar="ROLE=BCM", help="GPIO pin, e.g. echo=24")
    read.add_argument("--device", default=None, help="sysfs device, e.g. 28-000005e2fdc3")
    read.add_argument("--option", action="append", metavar="NAME=VALUE", help="driver option")

    watch = commands.add_parser("watch", help="print every edgetwin message on a broker")
    watch.add_argument("--topic", action="append", default=None, help="topic filter (default '#')")
    watch.add_argument("--count", type=int, default=None, help="exit after so many messages")
    add_connection_arguments(watch)
    # Before --broker: kept so that earlier scripts and notes still work.
    watch.add_argument("--host", default=None, help=argparse.SUPPRESS)
    watch.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    _add_record_replay(commands)
    _add_broker_acl(commands)
    _add_config_and_completion(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgetwin")
    except PackageNotFoundError:  # a checkout run without installing
        return "unknown"


def _add_config_and_completion(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    config = commands.add_parser("config", help="check a configuration file")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_commands.add_parser(
        "check",
        help="validate an agent's or gateway's file (any of its formats) and say what it runs",
    )
    check.add_argument("file", type=Path, help="agent or gateway TOML file")
    completion = commands.add_parser(
        "completion",
        help="print the shell completion script: edgetwin completion bash > "
        "/etc/bash_completion.d/edgetwin",
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish"])


def _add_broker_acl(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    acl = commands.add_parser(
        "broker-acl",
        help="write Mosquitto ACL, password, credentials and conf files for a gateway's fleet",
    )
    acl.add_argument("--config", type=Path, required=True, help="the gateway's config file")
    acl.add_argument("--out", type=Path, required=True, help="directory to write into")
    acl.add_argument(
        "--device", action="append", default=[], help="a device beyond the manifest (repeat)"
    )
    acl.add_argument(
        "--rotate",
        action="append",
        default=[],
        metavar="ID",
        help="new password for a device, or for gateway, engine, simulate or reader (repeat)",
    )
    acl.add_argument("--rotate-all", action="store_true", help="new passwords for everyone")
    acl.add_argument(
        "--install-dir", type=Path, default=None, help="where acl and passwords live on the broker"
    )
    acl.add_argument("--port", type=int, default=8883, help="the TLS listener's port")
    acl.add_argument("--bind", default=None, help="the TLS listener's address (default: all)")
    acl.add_argument("--cafile", default="/etc/mosquitto/certs/ca.crt")
    acl.add_argument("--certfile", default="/etc/mosquitto/certs/server.crt")
    acl.add_argument("--keyfile", default="/etc/mosquitto/certs/server.key")
    acl.add_argument(
        "--engine-status",
        action="store_true",
        help="let the engine and simulate write statuses (scenario offline faults); not with "
        "agents",
    )


def _add_record_replay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = commands.add_parser("record", help="record live telemetry to a CSV or JSONL file")
    record.add_argument(
        "--topic", action="append", default=None, help="topic filter (default: all telemetry)"
    )
    record.add_argument(
        "--prefix", default=None, help="topic prefix for the default filter (default: edgetwin)"
    )
    record.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.jsonl")
    record.add_argument("--duration", type=float, default=None, help="stop after so many seconds")
    record.add_argument("--count", type=int, default=None, help="stop after so many readings")
    record.add_argument("--overwrite", action="store_true", help="replace an existing file")
    add_connection_arguments(record)

    replay = commands.add_parser("replay", help="publish a recording as a simulated device")
    replay.add_argument("file", type=Path, help="a recording (.csv or .jsonl)")
    replay.add_argument("--speed", type=float, default=1.0, help="2 plays twice as fast")
    replay.add_argument("--device", default=None, help="publish as this device id")
    replay.add_argument("--only", default=None, help="replay only this recorded device")
    replay.add_argument("--loop", action="store_true", help="repeat until stopped")
    replay.add_argument("--duration", type=float, default=None, help="stop after so many seconds")
    replay.add_argument("--prefix", default=None, help="rebuild topics under this prefix")
    replay.add_argument("--topic-template", default=None, help="e.g. 'sensors/{device_id}'")
    replay.add_argument("--qos", type=int, choices=[0, 1], default=1)
    add_connection_arguments(replay)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    if "_ARGCOMPLETE" in os.environ:
        # The shell asking for completions (the script of `edgetwin completion`): answer and
        # exit. Only then is argcomplete imported.
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    if args.command == "agent":
        from edgetwin.agent.cli import run_agent

        return run_agent(args.config)
    if args.command == "gateway":
        from edgetwin.gateway.cli import run_gateway

        return run_gateway(args.config)
    if args.command == "demo":
        from edgetwin.gateway.demo import run_demo

        return run_demo(
            api_port=args.api_port,
            simulated_devices=args.devices,
            duration=args.duration,
            broker=args.broker,
            agent_delay=args.agent_delay,
        )
    if args.command == "sensors":
        return _sensors(args)
    tool = _BROKER_TOOLS.get(args.command)
    if tool is not None:
        # paho's reconnect warnings are for services' logs; a tool says what failed in one
        # line of its own.
        logging.basicConfig(level=logging.ERROR, format=f"edgetwin {args.command}: %(message)s")
        return tool(args)
    if args.command == "merge":
        from edgetwin.gateway.scenario.virtual import merge_command

        return merge_command(args.files, args.out)
    if args.command == "config":
        from edgetwin.check import check_config

        return check_config(args.file)
    if args.command == "completion":
        from argcomplete.shell_integration import shellcode

        sys.stdout.write(shellcode(["edgetwin"], shell=args.shell))
        return 0
    if args.command == "broker-acl":
        from edgetwin.gateway.acl import Listener, broker_acl_command

        return broker_acl_command(
            args.config,
            args.out,
            devices=args.device,
            rotate=args.rotate,
            rotate_all=args.rotate_all,
            install_dir=args.install_dir,
            listener=Listener(args.port, args.bind, args.cafile, args.certfile, args.keyfile),
            engine_status=args.engine_status,
        )
    raise AssertionError(f"unhandled command {args.command}")


def _settings(
    args: argparse.Namespace,
    program: str,
    *,
    protocol: Literal["5", "3.1.1"] = "5",
    prefix: str | None = None,
    topic: str | None = None,
) -> MqttSettings | None:
    """The broker settings of a tool's command line, or None after saying why not."""
    from edgetwin.connection import ConnectionOptionError, resolve_settings

    try:
        return resolve_settings(args, protocol=protocol, prefix=prefix, topic=topic)
    except ConnectionOptionError as exc:
        print(f"edgetwin {program}: {exc}", file=sys.stderr)
        return None


def _watch(args: argparse.Namespace) -> int:
    from edgetwin.agent.watch import watch

    if args.host is not None or args.port is not None:
        if args.broker is not None:
            print("edgetwin watch: --host/--port or --broker, not both", file=sys.stderr)
            return 2
        host = f"[{args.host}]" if args.host and ":" in args.host else args.host
        args.broker = f"{host or '127.0.0.1'}:{args.port or 1883}"
    # MQTT 3.1.1: the demo's broker may be amqtt's, which speaks nothing newer.
    settings = _settings(args, "watch", protocol="3.1.1")
    if settings is None:
        return 2
    return watch(settings, args.topic or ["#"], args.count)


def _record(args: argparse.Namespace) -> int:
    from edgetwin.gateway.recording import record_command

    settings = _settings(args, "record", protocol="3.1.1", prefix=args.prefix)
    if settings is None:
        return 2
    return record_command(
        settings,
        args.out,
        topic_filters=args.topic,
        duration=args.duration,
        count=args.count,
        overwrite=args.overwrite,
    )


def _replay(args: argparse.Namespace) -> int:
    from edgetwin.agent.contract import DEFAULT_PREFIX, ContractError, Topics
    from edgetwin.gateway.recording import replay_command

    settings = _settings(args, "replay", protocol="3.1.1")
    if settings is None:
        return 2
    topics = None
    try:
        if args.prefix is not None or args.topic_template is not None:
            topics = Topics(
                prefix=args.prefix or DEFAULT_PREFIX, telemetry_template=args.topic_template
            )
        elif args.config is not None:
            topics = settings.topics()  # the file's prefix and topic, as its programs use them
    except ContractError as exc:
        print(f"edgetwin replay: {exc}", file=sys.stderr)
        return 2
    return replay_command(
        args.file,
        settings,
        speed=args.speed,
        device=args.device,
        only=args.only,
        loop=args.loop,
        topics=topics,
        duration=args.duration,
        qos=args.qos,
    )


def _shard(args: argparse.Namespace) -> Shard | AutoShard | None:
    """`--shard K/N` or `auto/N`, else the replica's shard from its environment (ScenarioError
    if bad)."""
    from edgetwin.gateway.scenario.model import parse_shard_request, shard_from_environment

    if args.shard is not None:
        return parse_shard_request(args.shard)
    return shard_from_environment(os.environ, socket.gethostname())


def _simulate(args: argparse.Namespace) -> int:
    from edgetwin.agent.contract import DEFAULT_PREFIX, ContractError, Topics
    from edgetwin.connection import wants_broker
    from edgetwin.gateway.scenario.model import AutoShard, ScenarioError

    try:
        shard = _shard(args)
    except ScenarioError as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 2
    if args.run is not None and not isinstance(shard, AutoShard):
        print("edgetwin simulate: --run: only with --shard auto/N", file=sys.stderr)
        return 2
    if isinstance(shard, AutoShard) and args.virtual:
        print(
            f"edgetwin simulate: --shard {shard}: only in real time (a --virtual run's files "
            "are merged in shard order: give each its K/N)",
            file=sys.stderr,
        )
        return 2

    if (args.out is not None) == wants_broker(args):
        print(
            "edgetwin simulate: --out FILE (with --virtual) or a broker (--broker URL or "
            "--config FILE): one of them",
            file=sys.stderr,
        )
        return 2
    broker = None
    if wants_broker(args):
        broker = _settings(args, "simulate", prefix=args.prefix, topic=args.topic)
        if broker is None:
            return 2
    if args.virtual and args.metrics_port is not None:
        print("edgetwin simulate: --metrics-port: only in real time", file=sys.stderr)
        return 2
    if not args.virtual:
        if broker is None:
            print("edgetwin simulate: --out: only with --virtual; a real-time run publishes "
                  "to a broker", file=sys.stderr)  # fmt: skip
            return 2
        return _simulate_realtime(args, broker, shard)
    from edgetwin.gateway.scenario.virtual import simulate_command

    try:
        topics = (
            broker.topics()
            if broker is not None
            else Topics(prefix=args.prefix or DEFAULT_PREFIX, telemetry_template=args.topic)
        )
    except ContractError as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 2
    assert not isinstance(shard, AutoShard)  # refused above
    return simulate_command(
        args.scenario,
        devices=args.devices,
        start=args.start,
        duration=args.duration or "1h",
        out=args.out,
        broker=broker,
        topics=topics,
        payload=args.payload,
        qos=args.qos,
        quiet=args.quiet,
        shard=shard,
    )


def _simulate_realtime(
    args: argparse.Namespace, broker: MqttSettings, shard: Shard | AutoShard | None
) -> int:
    from edgetwin.gateway.engine.link import endpoint_from_mqtt
    from edgetwin.gateway.engine.realtime import run_realtime
    from edgetwin.gateway.scenario.model import (
        AutoShard,
        ScenarioError,
        parse_duration,
        scenario_for,
    )

    try:
        if args.start is not None:
            raise ValueError("--start: only with --virtual; a real-time run starts now")
        if not 1 <= args.workers <= 64:
            raise ValueError(f"--workers: 1..64, not {args.workers}")
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise ValueError(f"--metrics-port: 0..65535, not {args.metrics_port}")
        scenario = scenario_for(args.scenario, args.devices)
        seconds = None if args.duration is None else parse_duration(args.duration)
    except (ScenarioError, ValueError) as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 2

    def play(scenario: Scenario, stop: threading.Event | None = None) -> int:
        return run_realtime(
            scenario,
            endpoint_from_mqtt(broker),
            seconds=seconds,
            workers=args.workers,
            qos=args.qos,
            payload=args.payload,
            quiet=args.quiet,
            metrics=None if args.metrics_port is None else (args.metrics_host, args.metrics_port),
            stop=stop,
        )

    if isinstance(shard, AutoShard):
        return _play_a_claimed_shard(args, broker, scenario, shard.count, play)
    return play(scenario.sharded(shard))


def _play_a_claimed_shard(
    args: argparse.Namespace,
    broker: MqttSettings,
    scenario: Scenario,
    count: int,
    play: Callable[[Scenario, threading.Event], int],
) -> int:
    """`--shard auto/N`: claim the lowest free shard on the broker, play it, give it back."""
    from edgetwin.agent.contract import ContractError
    from edgetwin.gateway.scenario.claims import ShardClaim, ShardClaimError, default_run_name
    from edgetwin.gateway.scenario.model import Shard

    lost = threading.Event()
    try:
        claim = ShardClaim(
            broker,
            args.run or default_run_name(args.scenario),
            count,
            scenario.fleet_size(),
            on_lost=lambda _reason: lost.set(),
        )
    except ContractError as exc:
        print(f"edgetwin simulate: --run: {exc}", file=sys.stderr)
        return 2
    with claim:
        try:
            shard = Shard(index=claim.claim(), count=count)
        except ShardClaimError as exc:
            print(f"edgetwin simulate: {exc}", file=sys.stderr)
            return 1
        mine = scenario.sharded(shard)
        # On stderr whatever --quiet says: which share a replica plays is what its log is for.
        print(
            f"edgetwin simulate: run {claim.run!r}: claimed shard {shard}, "
            f"{mine.device_count()} of {scenario.fleet_size()} devices",
            file=sys.stderr,
            flush=True,
        )
        code = play(mine, lost)
        if claim.lost is not None:
            print(f"edgetwin simulate: {claim.lost}: stopped", file=sys.stderr)
            return 1
        return code


_BROKER_TOOLS: dict[str, Callable[[argparse.Namespace], int]] = {
    "watch": _watch,
    "record": _record,
    "replay": _replay,
    "simulate": _simulate,
}


def _sensors(args: argparse.Namespace) -> int:
    from edgetwin.hardware import cli

    if args.sensors_command == "list":
        return cli.list_command()
    if args.sensors_command == "probe":
        return cli.probe_command(args.dev_dir)
    pins = {role: int(pin) for role, pin in cli.parse_assignments(args.pin, "--pin").items()}
    options = {
        k: cli.option_value(v) for k, v in cli.parse_assignments(args.option, "--option").items()
    }
    return cli.read_command(
        args.driver,
        backend=args.backend,
        bus=args.bus,
        address=args.address,
        pins=pins,
        device=args.device,
        options=options,
    )


if __name__ == "__main__":
    sys.exit(main())
