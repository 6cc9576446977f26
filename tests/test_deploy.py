"""The deployment, checked offline: hadolint on the Dockerfile, every kustomize overlay rendered and
validated against Kubernetes' own schemas, Prometheus rules checked and unit-tested by promtool, and the
dashboard's queries checked against the metric names a live server exports."""

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from attnserve.service.settings import Settings
from attnserve.service.settings import load as load_settings

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
# Custom resources: no built-in schema. Checked here by name, never validated silently.
CUSTOM_RESOURCES = {"ServiceMonitor", "InferenceService", "Certificate"}
KUBERNETES_VERSION = "1.37.0"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is needed to render deploy/k8s"
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def validate(objects: list[dict], tmp_path: Path) -> subprocess.CompletedProcess:
    files = []
    for i, obj in enumerate(objects):
        files.append(tmp_path / f"{i}-{obj['kind']}.yaml")
        files[-1].write_text(yaml.safe_dump(obj))
    command = [str(BIN / "kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True)


def test_dockerfile_passes_hadolint():
    result = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "model-sync"])
def test_overlay_renders_and_validates_strictly(overlay, tmp_path):
    objects = render(overlay)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "Service",
            "ServiceMonitor",
        ]
    )
    custom = [o for o in objects if o["kind"] in CUSTOM_RESOURCES]
    assert [o["kind"] for o in custom] == ["ServiceMonitor"]
    builtin = [o for o in objects if o["kind"] not in CUSTOM_RESOURCES]
    result = validate(builtin, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == len(builtin)


def test_strict_validation_rejects_a_misspelled_field(tmp_path):
    """The check above can fail: a typo in a probe is caught."""
    deployment = next(o for o in render("cpu") if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    result = validate([deployment], tmp_path)
    assert result.returncode != 0 and "periodSecond" in result.stdout + result.stderr


def test_deployment_probes_security_and_drain_fit_the_server(tmp_path):
    objects = render("cpu")
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "attnserve")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == 50051, probe
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    )
    for c in [*pod["containers"], *pod["initContainers"]]:
        sc = c["securityContext"]
        assert (
            sc["readOnlyRootFilesystem"]
            and not sc["allowPrivilegeEscalation"]
            and sc["capabilities"]["drop"] == ["ALL"]
        )
    # the worker count and threads follow the CPU limit, which the server reads from its cgroup, and no
    # variable set from the manifest overrides that (tests/test_workers.py: usable_cores)
    assert not [e for e in container.get("env", []) if "THREADS" in e["name"] or "WORKERS" in e["name"]]
    assert container["resources"]["limits"]["cpu"] == "2"
    config_map = next(o for o in objects if o["kind"] == "ConfigMap")
    settings = tomllib.loads(config_map["data"]["attnserve.toml"])
    (tmp_path / "attnserve.toml").write_text(config_map["data"]["attnserve.toml"])
    served = load_settings(argparse.Namespace(config=tmp_path / "attnserve.toml"), environ={})
    assert served.reflection is False and served.port == 50051  # the file is one the server takes
    assert served.workers == 0  # chosen from the CPU limit
    drain = (
        container["lifecycle"]["preStop"]["sleep"]["seconds"]
        + settings["shutdown_delay_s"]
        + settings["grace_period_s"]
    )
    assert pod["terminationGracePeriodSeconds"] > drain, "the kubelet must not kill the server mid-drain"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    grpc_service = next(
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "attnserve-grpc"
    )
    assert grpc_service["spec"]["clusterIP"] == "None", "headless, so clients balance per call"


def test_model_sync_overlay_serves_a_synced_volume_by_polling(tmp_path):
    """The sidecar pattern (docs/deploy.md): a native sidecar syncs into the models volume, the server
    polls it with settings it accepts, and nothing of the base's one-time copy is left."""
    deployment = next(o for o in render("model-sync") if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    assert sidecar["name"] == "model-sync" and sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-f", "/tmp/synced"]
    assert "touch /tmp/synced" in sidecar["args"][0]  # what the probe waits for is what the loop writes
    assert {"name": "models", "mountPath": "/repository"} in sidecar["volumeMounts"]
    server = next(c for c in pod["containers"] if c["name"] == "attnserve")
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in server["volumeMounts"]
    environ = {e["name"]: e["value"] for e in server["env"]}
    config_map = next(o for o in render("model-sync") if o["kind"] == "ConfigMap")
    (tmp_path / "attnserve.toml").write_text(config_map["data"]["attnserve.toml"])
    served = load_settings(argparse.Namespace(config=tmp_path / "attnserve.toml"), environ=environ)
    assert (served.model_control, served.version_policy) == ("poll", "latest:1")
    assert served.repository == Path("/models")


def test_gpu_overlay_asks_for_a_gpu_node():
    deployment = next(o for o in render("gpu") if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "attnserve")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "ATTNSERVE_PROVIDER", "value": "cuda"} in container["env"]
    # one worker on a GPU, replacing the base's count from the CPU limit (not beside it: invalid)
    assert {"name": "ATTNSERVE_WORKERS", "value": "1"} in container["env"]
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["nodeSelector"]
    assert container["image"].endswith("-gpu")


def test_tls_overlay_validates_and_fits_the_server(tmp_path):
    objects = render("tls")
    builtin = [o for o in objects if o["kind"] not in CUSTOM_RESOURCES]
    result = validate(builtin, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(o["kind"] for o in objects if o["kind"] in CUSTOM_RESOURCES) == [
        "Certificate",
        "ServiceMonitor",
    ]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "attnserve")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = {f.name for f in dataclasses.fields(Settings)}
    assert {n.removeprefix("ATTNSERVE_").lower() for n in env} <= settings, "every variable is a setting"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # probes speak neither TLS nor tokens
        assert container[probe]["grpc"]["port"] == int(env["ATTNSERVE_HEALTH_PORT"]), probe
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    certificate = next(o for o in objects if o["kind"] == "Certificate")
    for variable in ("ATTNSERVE_TLS_CERT", "ATTNSERVE_TLS_KEY", "ATTNSERVE_TLS_CLIENT_CA"):
        folder, _, name = env[variable].rpartition("/")
        assert secrets[mounts[folder]] == certificate["spec"]["secretName"] and name in (
            "tls.crt",
            "tls.key",
            "ca.crt",
        )
    assert not [m for m in container["volumeMounts"] if "subPath" in m], "subPath mounts never see a renewal"
    monitor = next(o for o in objects if o["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https" and env["ATTNSERVE_METRICS_TLS"] == "true"


def test_kserve_example_and_adapter_rules(tmp_path):
    service = yaml.safe_load((DEPLOY / "k8s" / "kserve" / "inferenceservice.yaml").read_text())
    assert service["kind"] in CUSTOM_RESOURCES and service["apiVersion"] == "serving.kserve.io/v1beta1"
    # its predictor is a pod spec: validate that part against the Pod schema
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "predictor"},
        "spec": {"containers": service["spec"]["predictor"]["containers"]},
    }
    adapter = yaml.safe_load((DEPLOY / "k8s" / "prometheus-adapter" / "config.yaml").read_text())
    result = validate([pod, adapter], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    hpa = next(o for o in render("cpu") if o["kind"] == "HorizontalPodAutoscaler")
    custom_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")["pods"]["metric"]["name"]
    assert custom_metric in {r["name"]["as"] for r in rules}


def test_prometheus_rules_check_and_unit_tests():
    promtool = shutil.which("promtool")
    assert promtool, "make test installs Debian's prometheus package (promtool)"
    for command in (["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]):
        result = subprocess.run(
            [promtool, *command], cwd=DEPLOY / "prometheus", capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def exported_names(server) -> set[str]:
    text = urllib.request.urlopen(server.metrics_url, timeout=5).read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE attnserve_"):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total")  # counters' TYPE line may carry the suffix or not
            names |= {
                "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"},
                "counter": {f"{base}_total"},
            }.get(kind, {name})
    return names


def test_dashboard_and_rules_use_only_metrics_the_server_exports(server):
    exported = exported_names(server)
    assert {"attnserve_requests_total", "attnserve_stage_duration_seconds_bucket"} <= exported
    # a supervisor's own, with several workers (this server is one process): tests/test_workers.py
    # reads both from a real supervisor's /metrics
    exported |= {"attnserve_workers", "attnserve_worker_restarts_total"}
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    rule_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "attnserve-dashboard.json").read_text())
    panel_exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    panel_exprs.append(dashboard["templating"]["list"][1]["query"])
    used = set()
    for expr in rule_exprs + panel_exprs:
        used |= set(re.findall(r"\battnserve(?::[a-z0-9_]+)+|\battnserve_[a-z0-9_]+", expr))
    raw = {n for n in used if ":" not in n}
    assert raw <= exported, f"not exported by the server: {sorted(raw - exported)}"
    assert used - raw <= recorded, f"no recording rule for: {sorted(used - raw - recorded)}"
    assert any("stage" in e for e in panel_exprs) and any("batch_size" in e for e in panel_exprs)
