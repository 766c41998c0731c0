"""deploy/kubernetes/: every manifest valid against Kubernetes' own schema (kubernetes-validate
bundles them; no cluster here), and what the manifests tell edgetwin agrees with edgetwin:
the command lines parse, the shard count matches the replicas, the ConfigMap's gateway file
loads, the probes reach the ports the programs serve."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from edgetwin.cli import _parser
from edgetwin.gateway.config import default_gateway_id, load_gateway_config
from edgetwin.gateway.scenario.model import Shard, shard_from_environment

REPO = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES = "1.30"  # the oldest release still supported upstream when this was written


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}: {doc['kind']} {doc['metadata']['name']}", doc)
        for path in MANIFESTS
        for doc in yaml.safe_load_all(path.read_text())
    ]


def one(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for _, d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return dict(found)


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(only)


def env(spec: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "<from a secret>") for e in spec.get("env", [])}


@pytest.mark.parametrize(("where", "doc"), documents(), ids=[w for w, _ in documents()])
def test_every_manifest_is_valid_kubernetes(where: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_validator_refuses_a_broken_manifest() -> None:
    broken = one("StatefulSet", "edgetwin-sim")
    broken = {**broken, "spec": {**broken["spec"], "replicas": "twelve"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_each_simulation_replica_plays_its_own_shard_of_one_fleet() -> None:
    workload = one("StatefulSet", "edgetwin-sim")
    spec = container(workload)
    replicas = workload["spec"]["replicas"]
    args = _parser().parse_args([*spec["command"][1:], *spec["args"]])
    assert args.command == "simulate"
    assert not args.virtual
    # The pods are NAME-0 ... NAME-(replicas-1): together every shard, each once.
    name = workload["metadata"]["name"]
    shards = [shard_from_environment(env(spec), f"{name}-{ordinal}") for ordinal in range(replicas)]
    assert [(s.index, s.count) for s in shards if isinstance(s, Shard)] == [
        (k, replicas) for k in range(replicas)
    ]
    # Probes and the Prometheus annotation name the port the engine's figures are served on.
    (port,) = spec["ports"]
    assert port["containerPort"] == args.metrics_port
    assert args.metrics_host == "0.0.0.0"
    assert spec["livenessProbe"]["httpGet"]["port"] == port["name"]
    annotations = workload["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    service = one("Service", workload["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]


def test_the_gateways_run_their_configmaps_file_with_probes_on_their_api(tmp_path: Path) -> None:
    workload = one("StatefulSet", "edgetwin-gateway")
    # Several gateways on one prefix, each with an id of its own that survives its restarts:
    # the host name a StatefulSet gives each pod.
    replicas = workload["spec"]["replicas"]
    assert replicas >= 3
    name = workload["metadata"]["name"]
    ids = {default_gateway_id(f"{name}-{k}.{workload['spec']['serviceName']}") for k in range(3)}
    assert ids == {f"{name}-{k}" for k in range(3)}
    governing = one("Service", workload["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    api = one("Service", "edgetwin-gateway")
    assert api["spec"]["selector"] == workload["spec"]["selector"]["matchLabels"]
    spec = container(workload)
    config = tmp_path / "gateway.toml"
    config.write_text(one("ConfigMap", "edgetwin-gateway")["data"]["gateway.toml"])
    checked = subprocess.run(
        [sys.executable, "-m", "edgetwin", "config", "check", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    port = spec["ports"][0]["containerPort"]
    assert f"API        http://0.0.0.0:{port} " in checked.stdout
    assert spec["readinessProbe"]["httpGet"]["path"] == "/health"
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    assert spec["args"] == ["--config", f"{mounts['config']}/gateway.toml"]
    secrets = {e["name"] for e in spec["env"] if "valueFrom" in e}
    assert secrets == {"EDGETWIN_MQTT_PASSWORD", "EDGETWIN_API_TOKEN"}
    # No [gateway] id in the shared file: every replica would take the same one.
    assert "[gateway]" not in config.read_text() or "id =" not in config.read_text()
    # Nor a simulated fleet started with the gateway: every replica would play all of it, each
    # stream with `replicas` writers. Fleets are simulate.yaml's, one shard per pod.
    assert load_gateway_config(config, env(spec)).fleet_plan().launch is None
