"""The `edgetwin` command.

It sits above agent, gateway and hardware and imports each lazily, so that `edgetwin agent`
on a Raspberry Pi never loads FastAPI, uvicorn or the gateway.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetwin", description=__doc__.splitlines()[0] if __doc__ else None
    )
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
    target = simulate.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, default=None, help="JSON lines file to write")
    target.add_argument("--broker", default=None, metavar="HOST:PORT", help="broker to publish to")
    simulate.add_argument("--prefix", default="edgetwin", help="topic prefix")
    simulate.add_argument("--topic", default=None, help="telemetry topic template")
    simulate.add_argument("--payload", choices=["edgetwin", "flat"], default="edgetwin")
    simulate.add_argument("--qos", type=int, choices=[0, 1], default=1, help="with --broker")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar or status lines")
    simulate.add_argument(
        "--workers", type=int, default=2, help="real time: worker processes (default 2)"
    )

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
    watch.add_argument("--host", default="127.0.0.1")
    watch.add_argument("--port", type=int, default=1883)
    watch.add_argument("--topic", action="append", default=None, help="topic filter (default '#')")
    watch.add_argument("--count", type=int, default=None, help="exit after so many messages")
    _add_record_replay(commands)
    _add_broker_acl(commands)
    return parser


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
        help="new password for a device, or for gateway, engine or reader (repeat)",
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
        help="let the engine write statuses (scenario offline faults); not with agents",
    )


def _add_record_replay(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    record = commands.add_parser("record", help="record live telemetry to a CSV or JSONL file")
    record.add_argument("--broker", required=True, metavar="HOST:PORT")
    record.add_argument(
        "--topic", action="append", default=None, help="topic filter (default: all telemetry)"
    )
    record.add_argument("--prefix", default="edgetwin", help="topic prefix for the default filter")
    record.add_argument("--out", type=Path, required=True, help="FILE.csv or FILE.jsonl")
    record.add_argument("--duration", type=float, default=None, help="stop after so many seconds")
    record.add_argument("--count", type=int, default=None, help="stop after so many readings")
    record.add_argument("--overwrite", action="store_true", help="replace an existing file")

    replay = commands.add_parser("replay", help="publish a recording as a simulated device")
    replay.add_argument("file", type=Path, help="a recording (.csv or .jsonl)")
    replay.add_argument("--broker", required=True, metavar="HOST:PORT")
    replay.add_argument("--speed", type=float, default=1.0, help="2 plays twice as fast")
    replay.add_argument("--device", default=None, help="publish as this device id")
    replay.add_argument("--only", default=None, help="replay only this recorded device")
    replay.add_argument("--loop", action="store_true", help="repeat until stopped")
    replay.add_argument("--duration", type=float, default=None, help="stop after so many seconds")
    replay.add_argument("--prefix", default=None, help="rebuild topics under this prefix")
    replay.add_argument("--topic-template", default=None, help="e.g. 'sensors/{device_id}'")
    replay.add_argument("--qos", type=int, choices=[0, 1], default=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "sensors":
        return _sensors(args)
    if args.command == "watch":
        from edgetwin.agent.watch import watch

        return watch(args.host, args.port, args.topic or ["#"], args.count)
    if args.command == "record":
        from edgetwin.gateway.recording import record_command

        return record_command(
            args.broker,
            args.out,
            topic_filters=args.topic,
            prefix=args.prefix,
            duration=args.duration,
            count=args.count,
            overwrite=args.overwrite,
        )
    if args.command == "replay":
        from edgetwin.gateway.recording import replay_command

        return replay_command(
            args.file,
            args.broker,
            speed=args.speed,
            device=args.device,
            only=args.only,
            loop=args.loop,
            prefix=args.prefix,
            topic_template=args.topic_template,
            duration=args.duration,
            qos=args.qos,
        )
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


def _simulate(args: argparse.Namespace) -> int:
    if not args.virtual:
        return _simulate_realtime(args)
    from edgetwin.gateway.scenario.virtual import simulate_command

    return simulate_command(
        args.scenario,
        devices=args.devices,
        start=args.start,
        duration=args.duration or "1h",
        out=args.out,
        broker=args.broker,
        prefix=args.prefix,
        topic=args.topic,
        payload=args.payload,
        qos=args.qos,
        quiet=args.quiet,
    )


def _simulate_realtime(args: argparse.Namespace) -> int:
    from edgetwin.gateway.engine.link import Endpoint
    from edgetwin.gateway.engine.realtime import run_realtime
    from edgetwin.gateway.recording import parse_broker
    from edgetwin.gateway.scenario.model import ScenarioError, parse_duration, scenario_for

    try:
        if args.broker is None:
            raise ValueError("--out: only with --virtual; a real-time run publishes to --broker")
        if args.start is not None:
            raise ValueError("--start: only with --virtual; a real-time run starts now")
        if not 1 <= args.workers <= 64:
            raise ValueError(f"--workers: 1..64, not {args.workers}")
        host, port = parse_broker(args.broker)
        scenario = scenario_for(args.scenario, args.devices)
        seconds = None if args.duration is None else parse_duration(args.duration)
    except (ScenarioError, ValueError) as exc:
        print(f"edgetwin simulate: {exc}", file=sys.stderr)
        return 2
    endpoint = Endpoint(host=host, port=port, prefix=args.prefix, telemetry_template=args.topic)
    return run_realtime(
        scenario,
        endpoint,
        seconds=seconds,
        workers=args.workers,
        qos=args.qos,
        payload=args.payload,
        quiet=args.quiet,
    )


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
