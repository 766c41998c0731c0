"""The Compose stack (compose.yaml, Dockerfile, Dockerfile.agent, deploy/), with what runs here.

No Docker engine runs on these machines and images cannot be pulled, so the stack is checked
in parts, each with real programs where there are any:
- Prometheus's config by `promtool check config`; then a real Prometheus (Debian's) scraping
  a real gateway, the demo fleet's `edgetwin simulate` and a real agent on loopback, with a
  config made from the shipped one, and every PromQL query of every dashboard answered with
  series;
- compose.yaml by `docker-compose config` (Compose's own parser), and every name, port, host
  and mounted file it relies on against the configs it mounts; with N gateway replicas, each
  simulated device's stream written by one process, from the config each replica loads, and
  by three gateways and the demo fleet run on the stack's broker;
- the broker's and the demo's scripts by running them: broker-init.sh's files in a real
  mosquitto with the shipped mosquitto.conf, the gateway and agent-2 started as compose.yaml
  starts them (with-env.sh, flap.sh), agent-2's stops shown as hand-overs;
- the Dockerfiles by reading them: non-root user, health check, portable base.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from edgetwin.agent.contract import Telemetry
from edgetwin.cli import _parser
from edgetwin.gateway.broker import free_port
from edgetwin.gateway.config import GatewayConfig, StartDevices, load_gateway_config
from edgetwin.gateway.scenario.model import (
    AutoShard,
    Shard,
    default_scenario,
    parse_shard_request,
    scenario_for,
    shard_from_environment,
)
from edgetwin.testing._toml import toml_document
from edgetwin.testing.broker import Broker
from edgetwin.testing.capture import Capture
from edgetwin.testing.endpoint import MqttEndpoint
from edgetwin.testing.process import stop_process
from edgetwin.testing.waiting import poll
from tests.test_dashboards import (
    DASHBOARDS,
    label_values,
    load,
    prometheus_queries,
    substitute,
    variables,
)

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "compose.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
BIN = str(Path(sys.executable).parent)  # where `edgetwin` is, for the stack's shell scripts


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's mounts, container path -> source (a repository path or a volume name)."""
    result = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        result[target] = source
    return result


def mounted_file(service: dict[str, Any], target: str) -> Path:
    return (ROOT / mounts(service)[target]).resolve()


def toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def host_port(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url if "//" in url else f"//{url}")
    assert parsed.hostname is not None, url
    assert parsed.port is not None, url
    return parsed.hostname, parsed.port


def networks(service: dict[str, Any]) -> set[str]:
    # A list of names, or a mapping of names to settings (aliases): its keys.
    return set(service.get("networks", ["default"]))


def resolves(host: str, client: str) -> str:
    """The service that `host` names from the service `client`: a service name or a network
    alias on a network they share (how Docker's DNS answers)."""
    everyone = services()
    shared = networks(everyone[client])
    for name, service in everyone.items():
        on = service.get("networks", ["default"])
        aliases = {
            alias
            for network, settings in (on.items() if isinstance(on, dict) else [])
            for alias in (settings or {}).get("aliases", [])
            if network in shared
        }
        if networks(service) & shared and host in {name, *aliases}:
            return name
    raise AssertionError(f"{host!r} names no service that {client} can reach")


def mosquitto_listener(conf: Path) -> int:
    match = re.search(r"^listener (\d+)", conf.read_text(), re.MULTILINE)
    assert match, conf
    return int(match[1])


def need(binary: str) -> str:
    found = shutil.which(binary, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")
    if found is None:
        pytest.skip(f"{binary} is not installed (.ci/run installs it with apt-get)")
    return found


# -- Prometheus's config ---------------------------------------------------------------------


def test_promtool_accepts_the_shipped_prometheus_config() -> None:
    promtool = need("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_scrapes_the_services_on_the_ports_they_listen_on() -> None:
    everyone = services()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # The gateway's /metrics is on its API port: the twin, the stand-ins and the engine.
    (gateway_target,) = jobs["gateway"]["static_configs"][0]["targets"]
    gateway_config = toml(mounted_file(everyone["gateway"], "/etc/edgetwin/gateway.toml"))
    assert host_port(gateway_target) == ("gateway", gateway_config["server"]["port"])
    # The engine dashboard's figures: the demo fleet's, on its --metrics-port.
    (demo_target,) = jobs["demo-fleet"]["static_configs"][0]["targets"]
    words = everyone["demo-fleet"]["command"]
    assert host_port(demo_target) == ("demo-fleet", int(words[words.index("--metrics-port") + 1]))
    # Each agent on its config's prometheus_port, labelled with its config's device id.
    agents = {
        host_port(target)[0]: (host_port(target)[1], group["labels"]["device"])
        for group in jobs["agent"]["static_configs"]
        for target in group["targets"]
    }
    assert set(agents) == {name for name in everyone if name.startswith("agent-")}
    for name, (port, device) in agents.items():
        agent = toml(mounted_file(everyone[name], "/etc/edgetwin/agent.toml"))
        assert agent["observability"]["prometheus_port"] == port
        assert agent["observability"]["prometheus_host"] == "0.0.0.0"
        assert agent["agent"]["device_id"] == device
        resolves(name, "prometheus")
    # The original simulator: by DNS, its service and its config's prometheus_port.
    (simulator,) = jobs["simulator"]["dns_sd_configs"]
    simulator_config = toml(mounted_file(everyone["simulator"], "/etc/edgetwin/simulator.toml"))
    assert simulator["port"] == simulator_config["observability"]["prometheus_port"]
    assert [resolves(name, "prometheus") for name in simulator["names"]] == ["simulator"]
    # The simulation replicas (profile scale): by DNS, every one of them, on --metrics-port.
    (simulate,) = jobs["simulate"]["dns_sd_configs"]
    words = everyone["simulate"]["command"]
    assert simulate["port"] == int(words[words.index("--metrics-port") + 1])
    assert [resolves(name, "prometheus") for name in simulate["names"]] == ["simulate"]


# -- compose.yaml --------------------------------------------------------------------------------


def compose_config(*args: str, **variables: str) -> dict[str, Any]:
    """compose.yaml as `docker-compose config` resolves it, with these variables set."""
    binary = need("docker-compose")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIMULATE_")}
    result = subprocess.run(
        [binary, "-f", str(COMPOSE), *args, "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**environ, **variables},
    )
    assert result.returncode == 0, result.stderr
    resolved: dict[str, Any] = yaml.safe_load(result.stdout)
    return resolved


@pytest.mark.parametrize("profile", [None, "original", "scale"])
def test_docker_compose_parses_the_stack(profile: str | None) -> None:
    resolved = compose_config(*(["--profile", profile] if profile else []))
    always = {
        "broker-init", "mosquitto", "gateway", "demo-fleet", "agent-1", "agent-2",
        "config-pusher", "otel-collector", "tempo-init", "tempo", "prometheus", "grafana",
    }  # fmt: skip
    # Compose 1.x prints profiled services too; their profile says when they run.
    main = {name for name, s in resolved["services"].items() if not s.get("profiles")}
    assert main == always
    original = {n for n, s in resolved["services"].items() if s.get("profiles") == ["original"]}
    assert original == {"simulator", "simulator-broker"}
    scale = {n for n, s in resolved["services"].items() if s.get("profiles") == ["scale"]}
    assert scale == {"simulate"}
    # Both images are built from this checkout, the rest pulled.
    builds = {
        name: s["build"]["dockerfile"] for name, s in resolved["services"].items() if "build" in s
    }
    assert set(builds.values()) == {"Dockerfile", "Dockerfile.agent"}


def test_the_scale_profiles_replicas_play_one_fleet_of_ids_of_its_own() -> None:
    """`--scale simulate=N`: alike replicas (no host port, no fixed name) that claim their
    shares of one fleet on the stack's broker with the identity broker-init writes for them;
    a fleet whose ids are neither the demo fleet's nor the manifest's."""
    everyone = services()
    simulate = everyone["simulate"]
    assert "ports" not in simulate
    assert not {"container_name", "hostname"} & set(simulate)
    resolved = compose_config("--profile", "scale")["services"]["simulate"]
    program = resolved["entrypoint"][resolved["entrypoint"].index("--") + 1 :]
    assert program == ["edgetwin", "simulate"]
    args = _parser().parse_args([*program[1:], *resolved["command"]])
    assert (args.shard, args.devices, args.virtual) == ("auto/3", 3000, False)
    assert args.run is None  # the scenario file's name: every replica the same
    assert resolved["entrypoint"][1] == "/var/lib/edgetwin/broker/credentials/simulate.env"
    assert mounts(simulate)["/var/lib/edgetwin"] == "secrets"
    grown = compose_config("--profile", "scale", SIMULATE_SHARDS="5", SIMULATE_DEVICES="50")
    assert grown["services"]["simulate"]["command"][1:6] == [
        "/etc/edgetwin/scale.toml", "--devices", "50", "--shard", "auto/5",
    ]  # fmt: skip
    # The stack's broker, on its listener.
    host, port = host_port(args.broker)
    assert resolves(host, "simulate") == "mosquitto"
    listener = mounted_file(everyone["mosquitto"], "/mosquitto/config/mosquitto.conf")
    assert port == mosquitto_listener(listener)
    # Ids of its own beside the demo fleet and the manifest on the same prefix.
    fleet = set(scenario_for(mounted_file(simulate, str(args.scenario)), args.devices).device_ids())
    gateway_config = toml(mounted_file(everyone["gateway"], "/etc/edgetwin/gateway.toml"))
    demo = _parser().parse_args(compose_program("demo-fleet")[1:])
    demo_fleet = set(scenario_for(demo.scenario, demo.devices).device_ids())
    manifest = {device["id"] for device in gateway_config["devices"]}
    assert len(fleet) == 3000
    assert not fleet & (demo_fleet | manifest)
    assert args.prefix is None
    assert gateway_config["mqtt"]["prefix"] == "edgetwin"  # the ACL's, simulate's default
    # The engine's figures: the health check and Prometheus ask the port they are served on.
    assert (args.metrics_host, args.metrics_port) == ("0.0.0.0", 9102)
    assert f"127.0.0.1:{args.metrics_port}/metrics" in " ".join(simulate["healthcheck"]["test"])


def test_the_gateway_scales_to_three_replicas_each_with_its_own_id_and_port() -> None:
    """`--scale gateway=3`: a host port each, and an id each from its container's host name
    (nothing in compose.yaml or the file names one, which replicas would then share)."""
    everyone = services()
    gateway = everyone["gateway"]
    (published,) = gateway["ports"]
    first, last, container = re.fullmatch(r"(\d+)-(\d+):(\d+)", published).groups()  # type: ignore[union-attr]
    assert int(last) - int(first) + 1 == 3
    config = toml(mounted_file(gateway, "/etc/edgetwin/gateway.toml"))
    assert int(container) == config["server"]["port"]
    assert not {"container_name", "hostname"} & set(gateway)
    assert "EDGETWIN_GATEWAY_ID" not in gateway.get("environment", {})
    assert "id" not in config.get("gateway", {})
    container_id = "3f9a0c21d7be"  # a container's host name: the first 12 hex digits of its id
    assert GatewayConfig.from_builtins({}).gateway.gateway_id(container_id) == container_id
    # Clients reach any replica by the service's name.
    pusher = everyone["config-pusher"]["environment"]["GATEWAY_URL"]
    assert resolves(host_port(pusher)[0], "config-pusher") == "gateway"


# -- one writer per simulated stream, however many gateways run -------------------------------


def compose_program(service: str, variables: dict[str, str] | None = None) -> list[str]:
    """The program a service of compose.yaml runs: its entrypoint after with-env.sh's `--` (or
    all of it), then its command, variables filled in as Compose fills them."""
    spec = services()[service]
    given = [*spec.get("entrypoint", []), *spec.get("command", [])]
    words = [interpolate(str(word), variables or {}) for word in given]
    return words[words.index("--") + 1 :] if "--" in words else words


def service_environment(service: str, secrets: Path) -> dict[str, str]:
    """A replica's environment as its program sees it: compose.yaml's `environment`, then the
    files with-env.sh loads before `--` (broker-init's, from `secrets`, the volume's content)."""
    spec = services()[service]
    env = {k: str(v) for k, v in (spec.get("environment") or {}).items()}
    entrypoint = [str(w) for w in spec.get("entrypoint", [])]
    if entrypoint and entrypoint[0].endswith("/with-env.sh"):
        for file in entrypoint[1 : entrypoint.index("--")]:
            env |= env_file(secrets / Path(file).relative_to("/var/lib/edgetwin"))
    return env


def gateway_streams(path: Path, env: dict[str, str]) -> set[str]:
    """The devices whose simulated streams a gateway's engine plays from its start, with the
    config it loads from `path` in environment `env`: its fleet plan's launch, in the shard
    `[engine] shard` (or EDGETWIN_SHARD) gives it. Its stand-ins are not counted: they play
    manifest devices, each by the one gateway that owns it (tests/test_gateways.py)."""
    # Compose's replicas have host names without an ordinal: the shard cannot come from one.
    assert "EDGETWIN_SHARD_COUNT" not in env
    config = load_gateway_config(path, env)
    plan = config.fleet_plan()
    if plan.launch is None:
        return set()
    assert isinstance(plan.launch, StartDevices), "a start_scenario fleet: count it here too"
    fleet = default_scenario(
        plan.launch.count, plan.interval, plan.seed, prefix=plan.ids.prefix, width=plan.ids.width
    )
    # The original simulator's group (routes) is not sharded; an /engine fleet is.
    shard = None if plan.routes else config.engine.shard_spec()
    return set(fleet.sharded(shard).device_ids())


def simulate_streams(
    service: str, replicas: int, secrets: Path, variables: dict[str, str]
) -> list[set[str]]:
    """The devices each of `replicas` replicas of an `edgetwin simulate` service plays. With
    `--shard auto/N` each claims the lowest share no other holds, and one past N is refused
    (the claims are tested on a real broker in tests/test_shard_claims.py and below)."""
    spec = services()[service]
    args = _parser().parse_args(compose_program(service, variables)[1:])
    scenario = None if args.scenario is None else mounted_file(spec, str(args.scenario))
    fleet = scenario_for(scenario, args.devices)
    env = service_environment(service, secrets)
    container = "3f9a0c21d7be"  # a Compose replica's host name: its container id, no ordinal
    shard = (
        parse_shard_request(args.shard)
        if args.shard is not None
        else shard_from_environment(env, container)
    )
    played = []
    for replica in range(replicas):
        if isinstance(shard, AutoShard):
            held = Shard(index=replica, count=shard.count) if replica < shard.count else None
            played.append(set(fleet.sharded(held).device_ids()) if held is not None else set())
        else:
            played.append(set(fleet.sharded(shard).device_ids()))
    return played


def engine_writers(
    replicas: dict[str, int],
    profile: str | None,
    secrets: Path,
    *,
    gateway_file: Path | None = None,
    variables: dict[str, str] | None = None,
) -> dict[str, list[set[str]]]:
    """Per service that runs a simulation engine (the gateway, `edgetwin simulate`), the
    devices each replica plays, when `docker compose [--profile P] up --scale S=N ...` runs
    `replicas[S]` replicas of S (1 if not named)."""
    active = compose_config(*(["--profile", profile] if profile else []), **(variables or {}))
    writers: dict[str, list[set[str]]] = {}
    for name, resolved in active["services"].items():
        if resolved.get("profiles") and profile not in resolved["profiles"]:
            continue  # Compose 1.x lists profiled services; they do not run without --profile
        words = compose_program(name, variables)
        count = replicas.get(name, 1)
        if words[:2] == ["edgetwin", "gateway"]:
            path = gateway_file or mounted_file(services()[name], "/etc/edgetwin/gateway.toml")
            env = service_environment(name, secrets)
            writers[name] = [gateway_streams(path, env) for _ in range(count)]
        elif words[:2] == ["edgetwin", "simulate"]:
            writers[name] = simulate_streams(name, count, secrets, variables or {})
    return writers


def broker_init(secrets: Path) -> None:
    """broker-init, as the one-shot service runs it at each start of the stack: the broker's
    files and every identity's credentials into `secrets`, the volume's content."""
    env = {
        **os.environ,
        "PATH": BIN + os.pathsep + os.environ["PATH"],
        "EDGETWIN_SECRETS_DIR": str(secrets),
        "EDGETWIN_GATEWAY_CONFIG": str(DEPLOY / "edgetwin" / "gateway.toml"),
    }
    init = ["sh", str(DEPLOY / "edgetwin" / "broker-init.sh")]
    subprocess.run(init, env=env, check=True, capture_output=True)


@pytest.fixture(scope="module")
def stack_secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    secrets = tmp_path_factory.mktemp("stack") / "secrets"
    secrets.mkdir(mode=0o700)
    broker_init(secrets)
    return secrets


DEMO_FLEET = {f"device_{i:03d}" for i in range(100)}


@pytest.mark.parametrize(
    ("gateways", "profile", "demo_fleets"),
    [(1, None, 1), (2, None, 1), (3, None, 1), (3, None, 2), (1, "scale", 1), (3, "scale", 1)],
)
def test_with_n_gateway_replicas_each_simulated_stream_has_one_writer(
    stack_secrets: Path, gateways: int, profile: str | None, demo_fleets: int
) -> None:
    """`docker compose [--profile scale] up --scale gateway=N [--scale demo-fleet=2]
    [--scale simulate=3]`: every replica loads the config it would load (the mounted file,
    compose.yaml's environment and broker-init's env files), and every simulated device's
    stream is played by exactly one process, whatever N. The gateways play none: the stack's
    simulated fleets are `edgetwin simulate` services, which claim their shares on the broker."""
    replicas = {"gateway": gateways, "demo-fleet": demo_fleets, "simulate": 3}
    writers = engine_writers(replicas, profile, stack_secrets)
    assert len(writers["gateway"]) == gateways
    assert all(not played for played in writers["gateway"]), "a gateway starts an engine fleet"
    counts = Counter(device for sets in writers.values() for played in sets for device in played)
    twice = sorted(device for device, n in counts.items() if n > 1)
    assert not twice, f"streams with several writers: {twice[:5]} ... ({len(twice)})"
    # The default stack still shows a demo fleet (the engine dashboard); the scale profile adds
    # its own 3,000 devices; none is a manifest device, which agents and stand-ins write.
    assert set(counts) >= DEMO_FLEET
    assert len(counts) == 100 + (3000 if profile == "scale" else 0)
    gateway_config = toml(mounted_file(services()["gateway"], "/etc/edgetwin/gateway.toml"))
    assert not {device["id"] for device in gateway_config["devices"]} & set(counts)


def test_the_writer_count_sees_a_start_fleet_that_every_gateway_replica_plays(
    stack_secrets: Path, tmp_path: Path
) -> None:
    """The count above is not blind: the stack's gateway file with `[engine] start_devices`
    (the stack before its fleet moved to demo-fleet) has each of three replicas play all of
    it, beside demo-fleet; a fixed `[engine] shard`, the same for every replica of one
    service, still has them all play the same share."""
    config = toml(DEPLOY / "edgetwin" / "gateway.toml")
    config["engine"] |= {"start_devices": 100}
    (tmp_path / "gateway.toml").write_text(toml_document(config))
    writers = engine_writers(
        {"gateway": 3}, None, stack_secrets, gateway_file=tmp_path / "gateway.toml"
    )
    counts = Counter(device for sets in writers.values() for played in sets for device in played)
    assert {counts[device] for device in DEMO_FLEET} == {4}
    config["engine"] |= {"shard": "0/3"}
    (tmp_path / "gateway.toml").write_text(toml_document(config))
    writers = engine_writers(
        {"gateway": 3}, None, stack_secrets, gateway_file=tmp_path / "gateway.toml"
    )
    (share,) = {frozenset(played) for played in writers["gateway"]}
    assert len(share) == 34  # 100 in three shares: the first holds 34


def test_every_file_the_stack_mounts_exists() -> None:
    named = set(compose()["volumes"])
    for name, service in services().items():
        for target, source in mounts(service).items():
            if source in named:
                continue
            assert source.startswith("./"), f"{name}: {source} is neither a path nor a volume"
            assert (ROOT / source).exists(), f"{name} mounts {source} at {target}: missing"
        # Scripts an entrypoint runs from the mounted deploy/edgetwin must be there too.
        deploy = mounts(service).get("/opt/edgetwin-deploy")
        for word in [*service.get("entrypoint", []), *service.get("command", [])]:
            if str(word).startswith("/opt/edgetwin-deploy/"):
                assert deploy is not None, name
                assert (ROOT / deploy / word.removeprefix("/opt/edgetwin-deploy/")).is_file()


def test_broker_and_collector_hosts_are_the_services_that_listen_there() -> None:
    everyone = services()
    broker_port = mosquitto_listener(
        mounted_file(everyone["mosquitto"], "/mosquitto/config/mosquitto.conf")
    )
    collector_config = yaml.safe_load(
        mounted_file(everyone["otel-collector"], "/etc/otelcol/config.yaml").read_text()
    )
    collector_port = host_port(
        collector_config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    )[1]
    configs = {
        "gateway": "/etc/edgetwin/gateway.toml",
        "agent-1": "/etc/edgetwin/agent.toml",
        "agent-2": "/etc/edgetwin/agent.toml",
    }
    for name, path in configs.items():
        config = toml(mounted_file(everyone[name], path))
        assert resolves(config["mqtt"]["host"], name) == "mosquitto"
        assert config["mqtt"]["port"] == broker_port
        trace_host, trace_port = host_port(config["observability"]["trace_endpoint"])
        assert resolves(trace_host, name) == "otel-collector"
        assert trace_port == collector_port
        assert config["observability"]["trace_endpoint"].endswith("/v1/traces")
    # The collector forwards to Tempo's OTLP gRPC receiver; Grafana reads Tempo and Prometheus.
    tempo = yaml.safe_load(mounted_file(everyone["tempo"], "/etc/tempo/tempo.yaml").read_text())
    tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    exporter_host, exporter_port = host_port(collector_config["exporters"]["otlp"]["endpoint"])
    assert resolves(exporter_host, "otel-collector") == "tempo"
    assert exporter_port == host_port(tempo_grpc)[1]
    sources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )
    urls = {source["type"]: host_port(source["url"]) for source in sources["datasources"]}
    assert urls["tempo"] == ("tempo", tempo["server"]["http_listen_port"])
    assert urls["prometheus"] == ("prometheus", 9090)  # the prom/prometheus image's port
    for host, _port in urls.values():
        resolves(host, "grafana")
    home = everyone["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (DEPLOY / "grafana" / "dashboards" / Path(home).name).is_file()


def test_the_original_simulators_config_runs_in_the_stack_unchanged() -> None:
    """config/simulator.toml itself is mounted; its host names `mqtt` and `otel-collector`
    name an anonymous broker (as in the original's own stack) and the stack's collector."""
    everyone = services()
    simulator = everyone["simulator"]
    assert mounts(simulator)["/etc/edgetwin/simulator.toml"] == "./config/simulator.toml"
    assert simulator["command"] == ["--config", "/etc/edgetwin/simulator.toml"]
    original = toml(ROOT / "config" / "simulator.toml")
    broker = resolves(original["mqtt"]["host"], "simulator")
    assert original["mqtt"]["host"] == "mqtt"
    assert broker == "simulator-broker"
    conf = mounted_file(everyone[broker], "/mosquitto/config/mosquitto.conf")
    assert mosquitto_listener(conf) == original["mqtt"]["port"]
    assert "allow_anonymous true" in conf.read_text()  # the file has no credentials
    trace_host, trace_port = host_port(original["observability"]["trace_endpoint"])
    assert resolves(trace_host, "simulator") == "otel-collector"
    collector = yaml.safe_load(
        mounted_file(everyone["otel-collector"], "/etc/otelcol/config.yaml").read_text()
    )
    assert (
        trace_port == host_port(collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"])[1]
    )
    # Its own broker: the stack's gateway and the original's fleet both use prefix edgetwin.
    assert not networks(simulator) & networks(everyone["mosquitto"])
    # And the gateway accepts the file as it is.
    check = [sys.executable, "-m", "edgetwin", "config", "check"]
    result = subprocess.run(
        [*check, str(ROOT / "config" / "simulator.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the Dockerfiles ---------------------------------------------------------------------------


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each stage, (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result: list[list[tuple[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            result.append([])
        result[-1].append((instruction.upper(), arguments.strip()))
    return result


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.agent"])
def test_images_run_as_a_user_with_a_health_check_on_a_portable_base(name: str) -> None:
    built = stages(ROOT / name)
    for stage in built:
        base = stage[0][1].split()[0]
        assert re.fullmatch(r"python:3\.1[1-9]-slim", base), f"{name}: FROM {base}"
    final = built[-1]
    users = [args for instruction, args in final if instruction == "USER"]
    assert users, f"{name} names no USER: it runs as root"
    assert users[-1].split(":")[0] not in {"root", "0"}, f"{name} runs as root"
    healthchecks = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert len(healthchecks) == 1, name
    assert healthchecks[0].startswith("--") or healthchecks[0].startswith("CMD"), name
    assert " CMD " in f" {healthchecks[0]} ", name
    # Multi-architecture: no step names an architecture or fetches a binary for one.
    for stage in built:
        for instruction, args in stage:
            if instruction == "RUN":
                assert not re.search(r"amd64|x86_64|aarch64|arm64|armv7|armhf|curl|wget", args)


def test_the_agent_images_health_check_asks_the_port_the_stacks_agents_serve() -> None:
    final = stages(ROOT / "Dockerfile.agent")[-1]
    env = " ".join(args for instruction, args in final if instruction == "ENV")
    port = int(re.search(r"EDGETWIN_AGENT_METRICS_PORT=(\d+)", env)[1])  # type: ignore[index]
    (check,) = [args for instruction, args in final if instruction == "HEALTHCHECK"]
    assert "EDGETWIN_AGENT_METRICS_PORT" in check
    assert "/metrics" in check
    for name in ("agent-1", "agent-2"):
        config = toml(mounted_file(services()[name], "/etc/edgetwin/agent.toml"))
        assert config["observability"]["prometheus_port"] == port
    gateway = stages(ROOT / "Dockerfile")[-1]
    (check,) = [args for instruction, args in gateway if instruction == "HEALTHCHECK"]
    assert "/health" in check


# -- a real Prometheus, scraping a real gateway, engine and agent ------------------------------


def local_prometheus_config(targets: dict[str, int]) -> dict[str, Any]:
    """The shipped config with each service's target moved to its loopback port, scraping
    every second; jobs and labels as shipped, so the dashboards' selectors meet them."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = []
    for job in config["scrape_configs"]:
        groups = []
        for group in job.get("static_configs", []):
            moved = [
                f"127.0.0.1:{targets[host_port(t)[0]]}"
                for t in group["targets"]
                if host_port(t)[0] in targets
            ]
            if moved:
                groups.append({**group, "targets": moved})
        if groups:
            jobs.append({"job_name": job["job_name"], "static_configs": groups})
    config["scrape_configs"] = jobs
    return config


def prometheus_get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]


class PrometheusFactory(Protocol):
    def __call__(self, config: dict[str, Any]) -> str: ...


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start Debian's Prometheus with a config (a dict) on a free loopback port, with its
    storage in a temporary directory; returns its base URL once it is ready."""
    binary = need("prometheus")
    started: list[subprocess.Popen[bytes]] = []
    log = (tmp_path / "prometheus.log").open("wb")

    def start(config: dict[str, Any]) -> str:
        port = free_port()
        path = tmp_path / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        started.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={path}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=log,
            )
        )
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        poll(ready, 20, 0.1, what="Prometheus ready")
        return base

    try:
        yield start
    finally:
        for process in started:
            stop_process(process, timeout=10)
        log.close()


def grafana_escape(value: str) -> str:
    """A label value as Grafana writes it into a PromQL regex (prometheusRegularEscape):
    regex metacharacters behind a backslash, itself doubled inside the PromQL string."""
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"([$^*{}\[\]'+?.()|])", r"\\\\\1", value)


def query(base: str, expr: str) -> list[dict[str, Any]]:
    try:
        data = prometheus_get(base, "/api/v1/query", query=expr)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus refused {expr!r}: {exc.read().decode()}") from exc
    result: list[dict[str, Any]] = data["result"]
    return result


AGENT_DEVICE = "greenhouse-01"  # the stack's agent-1; greenhouse-02 stays simulated here


@pytest.mark.integration
def test_every_dashboard_query_returns_series_from_the_running_product(
    request: pytest.FixtureRequest,
    broker: Broker,
    edgetwin_gateway: Any,
    edgetwin_agent: Any,
    prometheus: PrometheusFactory,
) -> None:
    """The product's real metrics, scraped by a real Prometheus with the shipped config's jobs
    and labels: every Prometheus query of every dashboard, variables set to all their values
    as Grafana's "All" sends them, answers with at least one series."""
    gateway_config = toml(DEPLOY / "edgetwin" / "gateway.toml")
    manifest = gateway_config["devices"]
    gateway = edgetwin_gateway(manifest, broker=broker)
    # The stack's engine fleet: demo-fleet's program as compose.yaml runs it, smaller, on this
    # broker (anonymous: no credentials to load) and a metrics port of its own.
    fleet_port = free_port()
    words = compose_program("demo-fleet")
    changes = {"--devices": "20", "--broker": broker.url, "--metrics-port": str(fleet_port)}
    changes["--metrics-host"] = "127.0.0.1"
    for option, value in changes.items():
        words[words.index(option) + 1] = value
    fleet = subprocess.Popen(
        [str(Path(BIN) / words[0]), *words[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    request.addfinalizer(lambda: stop_process(fleet, timeout=15))
    agent_port = free_port()
    agent = edgetwin_agent(
        {
            "agent": {"device_id": AGENT_DEVICE},
            "sensors": {"env": {"driver": "bme280", "address": 0x76, "interval": 0.5}},
            "observability": {"prometheus_port": agent_port, "prometheus_host": "127.0.0.1"},
        },
        broker=broker,
        mode="process",  # its own process, so process_* are the agent's
    )
    gateway_port = int(urllib.parse.urlsplit(gateway.url).port or 0)
    base = prometheus(
        local_prometheus_config(
            {"gateway": gateway_port, "agent-1": agent_port, "demo-fleet": fleet_port}
        )
    )

    # What some panels count must happen once: a config push applied (pushes, applies, sync),
    # and a sensor error (the agent's errors; the sensor handed to the simulation and back).
    gateway.client.request(
        "PATCH", f"/devices/{AGENT_DEVICE}/desired", {"sensors": {"env": {"interval": 0.4}}}
    )
    agent.wait_for_reported(lambda reported: reported.status == "applied")
    agent.nack("env")
    poll(
        lambda: query(base, "edgetwin_agent_sensor_errors_total"),
        20,
        0.2,
        what="a sensor error scraped",
    )
    agent.clear_faults("env")

    expressions = []
    for path in DASHBOARDS:
        dashboard = load(path)
        values = {}
        for variable in variables(dashboard):
            metric, label = label_values(variable)
            found: list[str] = []

            def have(metric: str = metric, label: str = label, found: list[str] = found) -> bool:
                found[:] = prometheus_get(
                    base, f"/api/v1/label/{label}/values", **{"match[]": metric}
                )
                return bool(found)

            poll(have, 20, 0.2, what=f"values of {path.stem}'s ${variable['name']}")
            values[variable["name"]] = "(" + "|".join(map(grafana_escape, found)) + ")"
        expressions += [
            (path.stem, title, substitute(expr, values, "30s"))
            for title, expr in prometheus_queries(dashboard)
        ]
    missing = list(expressions)
    deadline = time.monotonic() + 30
    while missing and time.monotonic() < deadline:
        missing = [e for e in missing if not query(base, e[2])]
        if missing:
            time.sleep(0.5)  # the next scrape, a second away at most
    assert not missing, "queries without series:\n" + "\n".join(map(str, missing))

    # And the figures are the product's: the agent's reading with its unit and source, the
    # push applied in sync, the hand-overs of the nacked sensor, commits timed.
    def agent_temperature() -> set[tuple[str, str]]:
        found = query(base, f'edgetwin_reading{{device="{AGENT_DEVICE}",quantity="temperature"}}')
        return {(s["metric"]["unit"], s["metric"]["source"]) for s in found}

    # The stand-in's last reading of the nacked sensor may still be the scraped one until the
    # agent's next reading after the fault is cleared.
    poll(
        lambda: agent_temperature() == {("°C", "emulated")},
        20,
        0.2,
        what="the agent's own temperature, in °C, scraped",
    )
    simulated = query(base, 'edgetwin_reading{device="greenhouse-02",quantity="pressure"}')
    assert {(s["metric"]["unit"], s["metric"]["source"]) for s in simulated} == {
        ("hPa", "simulated")
    }
    (in_sync,) = query(base, 'edgetwin_config_sync{state="in_sync"}')
    assert float(in_sync["value"][1]) >= 1

    def handovers() -> dict[str, float]:
        found = query(base, "edgetwin_handovers_total")
        return {s["metric"]["to"]: float(s["value"][1]) for s in found}

    # The hand-back after the fault is cleared may still be on its way to the next scrape.
    poll(
        lambda: handovers().get("simulation", 0) >= 1 and handovers().get("agent", 0) >= 1,
        20,
        0.2,
        what="both hand-overs of the nacked sensor scraped",
    )
    (commits,) = query(base, "edgetwin_agent_commit_seconds_count")
    assert float(commits["value"][1]) > 0
    # The engine's figures are demo-fleet's; the gateway's own engine is idle.
    engines = query(base, "edgetwin_engine_devices")
    assert {s["metric"]["job"]: float(s["value"][1]) for s in engines} == {
        "demo-fleet": 20,
        "gateway": 0,
    }


# -- the stack's broker and scripts, run as compose.yaml runs them -----------------------------


def env_file(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


def interpolate(word: str, variables: dict[str, str]) -> str:
    """`${NAME:-default}` as Compose fills it in: the variable's value, else the default."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: variables.get(m[1]) or m[2], word)


def as_compose_runs(
    service: str, paths: dict[str, Path], variables: dict[str, str] | None = None
) -> list[str]:
    """The service's entrypoint and command from compose.yaml, variables filled in (Compose
    reads them from the environment of `docker compose`), container paths mapped to local
    ones (longest first)."""
    spec = services()[service]
    words = [interpolate(w, variables or {}) for w in [*spec["entrypoint"], *spec["command"]]]
    mapped = []
    for word in words:
        for container in sorted(paths, key=len, reverse=True):
            if word == container or word.startswith(container + "/"):
                mapped.append(str(paths[container]) + word[len(container) :])
                break
        else:
            mapped.append(word)
    return mapped


def local(config: dict[str, Any], broker_port: int, **observability: Any) -> dict[str, Any]:
    """A stack config moved to loopback: the broker's port, no collector, fast reconnects."""
    moved = {
        section: dict(keys) if isinstance(keys, dict) else keys for section, keys in config.items()
    }
    moved["mqtt"] |= {"host": "127.0.0.1", "port": broker_port, "keepalive": 2}
    moved["mqtt"] |= {"reconnect_min_delay": 0.1, "reconnect_max_delay": 0.5}
    moved["observability"] = {
        k: v for k, v in moved["observability"].items() if k != "trace_endpoint"
    } | observability
    return moved


def gateway_metric(url: str, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = rf"^{name}(\{{[^}}]*\}})? (\S+)$"
    return {m[1] or "": float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


class StackBroker:
    """The stack's broker on loopback as compose.yaml starts it: broker-init.sh's files in a
    real mosquitto with the shipped mosquitto.conf; and the processes a test starts beside it,
    every one killed at the end if it still runs. One log for all."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.secrets = tmp_path / "secrets"
        self.secrets.mkdir(mode=0o700)
        self.env = {
            **os.environ,
            "PATH": BIN + os.pathsep + os.environ["PATH"],
            "EDGETWIN_SECRETS_DIR": str(self.secrets),
            "EDGETWIN_GATEWAY_CONFIG": str(DEPLOY / "edgetwin" / "gateway.toml"),
        }
        self.port = free_port()
        self.log = (tmp_path / "stack.log").open("wb")
        self.processes: list[subprocess.Popen[bytes]] = []

    def init(self) -> None:
        """broker-init, as the one-shot service runs it at each start of the stack."""
        broker_init(self.secrets)

    def __enter__(self) -> StackBroker:
        mosquitto = need("mosquitto")
        self.init()
        conf = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        conf = conf.replace("/mosquitto/secrets", str(self.secrets)).replace(
            "listener 1883", f"listener {self.port} 127.0.0.1"
        )
        if os.geteuid() == 0:
            # Started as root, mosquitto switches to user `mosquitto`, who cannot read the
            # 0600 password file; compose.yaml runs it as the files' owner, and so does this.
            conf += "user root\n"
        (self.tmp_path / "mosquitto.conf").write_text(conf)
        try:
            self.start([mosquitto, "-c", str(self.tmp_path / "mosquitto.conf")])
            poll(lambda: _accepts(self.port), 10, what="mosquitto listening")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        self.log.close()

    def start(self, args: list[str], **extra: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            args, env={**self.env, **extra}, stdout=self.log, stderr=self.log
        )
        self.processes.append(process)
        return process

    def identity(self, name: str) -> MqttEndpoint:
        """An endpoint with the credentials broker-init wrote in `credentials/{name}.env`."""
        env = env_file(self.secrets / "broker" / "credentials" / f"{name}.env")
        return MqttEndpoint(
            "127.0.0.1",
            self.port,
            username=env["EDGETWIN_MQTT_USERNAME"],
            password=env["EDGETWIN_MQTT_PASSWORD"],
        )


@pytest.mark.integration
def test_the_stacks_broker_gateway_and_flapping_agent_run_as_compose_runs_them(
    tmp_path: Path,
) -> None:
    """broker-init.sh's files in a real mosquitto with the shipped mosquitto.conf; the gateway
    and agent-2 started by compose.yaml's own entrypoints (with-env.sh loading the generated
    credentials; flap.sh stopping and starting the agent), on loopback. Every identity logs
    in under the ACL, agent-2's pauses are counted as hand-overs both ways, and flap.sh stops
    on SIGTERM with status 0."""
    with StackBroker(tmp_path) as stack:
        secrets = stack.secrets
        first = {p.name: p.read_text() for p in secrets.rglob("*.env")}
        stack.init()  # a restart of the stack
        assert {p.name: p.read_text() for p in secrets.rglob("*.env")} == first, "passwords changed"
        assert set(first) == {
            "api.env",
            "gateway.env",
            "simulate.env",
            "reader.env",
            "homeassistant.env",
            "greenhouse-01.env",
            "greenhouse-02.env",
        }
        port = stack.port
        api_port = free_port()
        gateway_config = local(toml(DEPLOY / "edgetwin" / "gateway.toml"), port)
        gateway_config["server"] = {"host": "127.0.0.1", "port": api_port}
        gateway_config["presence"] = {"startup_grace": 0.3}
        (tmp_path / "gateway.toml").write_text(toml_document(gateway_config))
        agent_config = local(
            toml(DEPLOY / "edgetwin" / "agent-2.toml"),
            port,
            prometheus_port=free_port(),
            prometheus_host="127.0.0.1",
        )
        agent_config["agent"]["state_dir"] = str(tmp_path / "agent-state")
        agent_config["sensors"]["env"]["interval"] = 0.5
        (tmp_path / "agent.toml").write_text(toml_document(agent_config))
        paths = {
            "/opt/edgetwin-deploy": DEPLOY / "edgetwin",
            "/var/lib/edgetwin": secrets,
            "/etc/edgetwin/gateway.toml": tmp_path / "gateway.toml",
            "/etc/edgetwin/agent.toml": tmp_path / "agent.toml",
        }
        gateway = stack.start(as_compose_runs("gateway", paths))
        url = f"http://127.0.0.1:{api_port}"
        poll(lambda: _healthy(url), 20, 0.1, what="gateway /health 200 (logged in to mosquitto)")
        with Capture(stack.identity("reader"), "edgetwin/+/telemetry/+") as seen:
            # Before any agent: both manifest devices taken up by the simulation, which is
            # not a hand-over (nobody served them before).
            seen.wait_for("edgetwin/greenhouse-02/telemetry/env", timeout=15)
            handovers = gateway_metric(url, "edgetwin_handovers_total")
            assert handovers == {'{to="simulation"}': 0, '{to="agent"}': 0}
            flapping = stack.start(as_compose_runs("agent-2", paths), FLAP_UP="3", FLAP_DOWN="2")
            # The agent's own identity and the gateway's stand-ins (on its engine identity):
            # each allowed to write what it writes. The demo fleet's identity is tested below.
            emulated = lambda m: b'"emulated"' in m.payload  # noqa: E731
            simulated = lambda m: b'"simulated"' in m.payload  # noqa: E731
            seen.wait_for("edgetwin/greenhouse-02/telemetry/env", emulated, timeout=15)
            seen.wait_for("edgetwin/greenhouse-01/telemetry/env", simulated, timeout=15)

        def handed_both_ways() -> bool:
            counts = gateway_metric(url, "edgetwin_handovers_total")
            return counts.get('{to="simulation"}', 0) >= 1 and counts.get('{to="agent"}', 0) >= 1

        poll(handed_both_ways, 30, 0.2, what="agent-2's stop and return counted as hand-overs")
        assert flapping.poll() is None, "flap.sh ended by itself"
        assert stop_process(flapping, timeout=15)[0] == 0
        assert stop_process(gateway, timeout=15)[0] == 0


@pytest.mark.integration
def test_the_scale_profiles_replicas_split_one_fleet_as_compose_runs_them(tmp_path: Path) -> None:
    """`docker compose --profile scale up --scale simulate=3`, without Docker: three
    `simulate` replicas started by compose.yaml's own entrypoint and command (with-env.sh
    loading broker-init's simulate.env) on the stack's broker with its ACL. They claim three
    shares and together publish the scale fleet, every device once; a fourth is refused."""
    variables = {"SIMULATE_DEVICES": "30"}
    scenario = mounted_file(services()["simulate"], "/etc/edgetwin/scale.toml")
    expected = set(scenario_for(scenario, 30).device_ids())
    with StackBroker(tmp_path) as stack:
        paths = {
            "/opt/edgetwin-deploy": DEPLOY / "edgetwin",
            "/var/lib/edgetwin": stack.secrets,
            "/etc/edgetwin/scale.toml": scenario,
        }

        def replica() -> list[str]:
            # On one host, not one container each: the broker's loopback port, and a metrics
            # port each.
            args = as_compose_runs("simulate", paths, variables)
            args[args.index("--broker") + 1] = f"mqtt://127.0.0.1:{stack.port}"
            args[args.index("--metrics-port") + 1] = str(free_port())
            return args

        with Capture(stack.identity("reader"), "edgetwin/+/telemetry/+") as seen:
            replicas = [stack.start(replica()) for _ in range(3)]

            def every_device_seen() -> bool:
                devices = {Telemetry.decode(m.payload).device for m in seen.messages()}
                assert devices <= expected, devices - expected
                return devices == expected

            poll(every_device_seen, 30, 0.1, what="the scale fleet from three replicas")
            readings = [Telemetry.decode(m.payload) for m in seen.messages()]
            numbered = [(r.device, r.sensor, r.seq) for r in readings]
            assert len(numbered) == len(set(numbered)), "a stream played twice"
        fourth = subprocess.run(
            replica(), env=stack.env, capture_output=True, text=True, timeout=60, check=False
        )
        assert fourth.returncode == 1, fourth.stderr
        assert "all 3 shards of run 'scale' are claimed: scale to at most 3 replicas" in (
            fourth.stderr
        )
        for process in replicas:
            assert stop_process(process, timeout=15)[0] == 0
    claims = (tmp_path / "stack.log").read_text(errors="replace")
    assert sorted(re.findall(r"run 'scale': claimed shard (\d)/3, 10 of 30 devices", claims)) == [
        "0",
        "1",
        "2",
    ]


@pytest.mark.integration
def test_three_gateway_replicas_and_the_demo_fleet_write_each_stream_once(tmp_path: Path) -> None:
    """`docker compose up --scale gateway=3`, without Docker: three gateways and demo-fleet
    started by compose.yaml's own entrypoints and commands on the stack's broker with its ACL
    (each gateway with an id and API port of its own, as containers have). Every stream, the
    demo fleet's and the manifest's stand-ins', is written by one process: no reading's
    (device, sensor, seq) comes twice; the gateways' engines play nothing, demo-fleet all 100
    devices; a second demo-fleet replica is refused."""
    with StackBroker(tmp_path) as stack:
        gateway_config = local(toml(DEPLOY / "edgetwin" / "gateway.toml"), stack.port)
        gateway_config["presence"] = {"startup_grace": 0.3}
        (tmp_path / "gateway.toml").write_text(toml_document(gateway_config))
        paths = {
            "/opt/edgetwin-deploy": DEPLOY / "edgetwin",
            "/var/lib/edgetwin": stack.secrets,
            "/etc/edgetwin/gateway.toml": tmp_path / "gateway.toml",
        }

        def demo_fleet(metrics_port: int) -> list[str]:
            # On one host: the broker's loopback port, a metrics port of its own.
            args = as_compose_runs("demo-fleet", paths)
            args[args.index("--broker") + 1] = f"mqtt://127.0.0.1:{stack.port}"
            args[args.index("--metrics-port") + 1] = str(metrics_port)
            return args

        with Capture(stack.identity("reader"), "edgetwin/+/telemetry/+") as seen:
            urls = []
            for k in range(3):
                port = free_port()
                urls.append(f"http://127.0.0.1:{port}")
                stack.start(
                    as_compose_runs("gateway", paths),
                    EDGETWIN_GATEWAY_ID=f"gateway-{k}",
                    EDGETWIN_SERVER_PORT=str(port),
                )
            metrics_port = free_port()
            fleet = stack.start(demo_fleet(metrics_port))

            def sees_three(url: str) -> bool:
                return _healthy(url) and len(_get_json(f"{url}/gateways")["gateways"]) == 3

            for url in urls:
                poll(functools.partial(sees_three, url), 20, 0.1, what=f"{url}: 3 gateways live")
            expected = DEMO_FLEET | {"greenhouse-01", "greenhouse-02"}
            start = len(seen.messages())

            def three_readings_each() -> bool:
                after = Counter(Telemetry.decode(m.payload).device for m in seen.messages()[start:])
                assert set(after) <= expected, set(after) - expected
                return set(after) == expected and min(after.values()) >= 3

            poll(three_readings_each, 30, 0.2, what="three readings of every stream, 3 gateways up")
            readings = [Telemetry.decode(m.payload) for m in seen.messages()]
            numbered = Counter((r.device, r.sensor, r.seq) for r in readings)
            twice = sorted(key for key, n in numbered.items() if n > 1)
            assert not twice, f"readings written twice: {twice[:5]} ({len(twice)})"
        # Who wrote them: each gateway's engine plays nothing, demo-fleet the whole fleet.
        for url in urls:
            assert gateway_metric(url, "edgetwin_engine_devices") == {"": 0}
        demo_metrics = gateway_metric(f"http://127.0.0.1:{metrics_port}", "edgetwin_engine_devices")
        assert demo_metrics == {"": 100}
        second = subprocess.run(
            demo_fleet(free_port()),
            env=stack.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1, second.stderr
        assert "all 1 shards of run 'demo' are claimed" in second.stderr
        assert stop_process(fleet, timeout=15)[0] == 0
        for process in stack.processes[1:4]:  # the gateways, after mosquitto
            assert stop_process(process, timeout=15)[0] == 0


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError):
        return False
