"""Deployment files: render the kustomizations, validate every object offline, check what matters."""
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
kubernetes_validate = pytest.importorskip("kubernetes_validate")
VERSION = kubernetes_validate.utils.latest_version()


def render_python(folder: pathlib.Path) -> list[dict]:
    """The kustomize features these files use: resources, labels, and $patch: delete."""
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects = []
    for res in k.get("resources", []):
        path = folder / res
        objects += render_python(path) if path.is_dir() else [o for o in yaml.safe_load_all(path.read_text()) if o]
    for labels in k.get("labels", []):
        for o in objects:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(labels["pairs"])
    for p in k.get("patches", []):
        patch = yaml.safe_load(p["patch"])
        if patch.get("$patch") == "delete":
            objects = [o for o in objects if (o["kind"], o["metadata"]["name"]) !=
                       (patch["kind"], patch["metadata"]["name"])]
    return objects


def render(folder: pathlib.Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return render_python(folder)
    out = subprocess.run([kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True).stdout
    rendered = [o for o in yaml.safe_load_all(out) if o]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in rendered) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in render_python(folder))
    return rendered


BUILTIN = ("v1", "apps/v1", "policy/v1")
CUSTOM_REQUIRED = {
    "ServiceMonitor": ["spec.selector", "spec.endpoints"],
    "ClusterServingRuntime": ["spec.supportedModelFormats", "spec.containers", "spec.protocolVersions"],
    "InferenceService": ["spec.predictor.model.modelFormat.name", "spec.predictor.model.runtime"],
}


def validate(objects: list[dict]) -> None:
    for o in objects:
        if o["apiVersion"] in BUILTIN:
            kubernetes_validate.validate(o, VERSION, strict=True)
        else:
            for path in CUSTOM_REQUIRED[o["kind"]]:
                node = o
                for part in path.split("."):
                    assert part in node, f"{o['kind']} {o['metadata']['name']} lacks {path}"
                    node = node[part]


def by_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def test_base_is_valid_and_serves_safely():
    objects = render(K8S / "base")
    validate(objects)
    # No ServiceMonitor: `kubectl apply -k` of the base must work on a cluster without the Prometheus Operator
    assert sorted(o["kind"] for o in objects) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service",
                                                 "Service"]
    (dep,) = by_kind(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["readinessProbe"]["grpc"]["port"] == c["livenessProbe"]["grpc"]["port"] == 50051
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    config = by_kind(objects, "ConfigMap")[0]["data"]["memserve.toml"]
    grace = float(re.search(r"shutdown-grace = (\d+)", config).group(1))
    assert pod["terminationGracePeriodSeconds"] >= grace + c["lifecycle"]["preStop"]["sleep"]["seconds"]
    headless = [s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1  # for clients balancing with dns:/// and round_robin
    # gRPC, HTTP/REST and metrics each on their own port, as the config sets them (Triton's 8000 and 8002)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "http": 8000, "metrics": 8002}
    for flag, name in (("port", "grpc"), ("http-port", "http"), ("metrics-port", "metrics")):
        assert re.search(rf"^\s*{flag} = (\d+)$", config, re.M).group(1) == str(ports[name]), flag
    (service,) = [s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") != "None"]
    assert {p["targetPort"]: p["port"] for p in service["spec"]["ports"]} == ports


def test_monitoring_overlay_adds_a_service_monitor_on_the_metrics_port():
    objects = render(K8S / "overlays" / "monitoring")
    validate(objects)
    (monitor,) = by_kind(objects, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (service,) = [s for s in by_kind(objects, "Service") if s["spec"].get("clusterIP") != "None"]
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_stateful_overlay_keeps_models_on_a_claim():
    objects = render(K8S / "overlays" / "stateful")
    validate(objects)
    assert by_kind(objects, "Deployment") == []
    (sts,) = by_kind(objects, "StatefulSet")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert "--state-dir" in c["args"]
    state_dir = c["args"][c["args"].index("--state-dir") + 1]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and state_dir.startswith(m["mountPath"])
               for m in c["volumeMounts"])


def test_kserve_runtime_and_inference_service():
    objects = [o for f in sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))
               for o in yaml.safe_load_all(f.read_text()) if o]
    validate(objects)
    (runtime,) = by_kind(objects, "ClusterServingRuntime")
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"]
    assert runtime["spec"]["supportedModelFormats"][0]["name"] == "onnx"
    args = runtime["spec"]["containers"][0]["args"]
    assert f"--metrics-port={runtime['spec']['annotations']['prometheus.kserve.io/port']}" in args
    assert "--http-port=8080" in args  # REST beside gRPC, on the ports Triton's runtime uses
    (isvc,) = by_kind(objects, "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]


def test_flags_in_manifests_exist():
    """Every memserved flag the manifests and the image pass is one memserved knows."""
    from memserve.config import parser

    known = {o for a in parser()._actions for o in a.option_strings}
    text = "\n".join(p.read_text() for p in (ROOT / "deploy").rglob("*") if p.is_file())
    used = set(re.findall(r"(--[a-z][a-z-]+)", text))
    assert used - {"--no-cache-dir", "--system", "--uid", "--home-dir", "--create-home", "--from", "--wheel",
                   "--outdir", "--interval", "--timeout", "--start-period", "--retries"} <= known


def test_dockerfile_runs_as_non_root_with_a_health_check():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]
    assert final.startswith("python:3.11-slim")
    assert re.search(r"^USER 10001$", final, re.M) and "HEALTHCHECK" in final
    assert "EXPOSE 50051 8000 8002" in final
    assert '"--http-port", "8000", "--metrics-port", "8002"' in final
    assert "[dev]" not in final  # runtime dependencies only
    # kernels compiled into the image, in a cache the non-root user reads
    assert "ENV MEMSERVE_KERNEL_CACHE=/opt/memserve/kernels" in final and "python -m memserve.kernels" in final


def test_the_image_builds_both_wheels_and_they_resolve_together(tmp_path):
    """What deploy/Dockerfile does: the client's wheel and the daemon's, installed from one folder (the
    daemon requires memserve-client, which no package registry serves)."""
    import json
    import sys

    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "--outdir /wheels client" in text
    wheels = tmp_path / "wheels"
    shutil.copytree(ROOT / "client", tmp_path / "client", ignore=shutil.ignore_patterns("*.egg-info", "build"))
    src = tmp_path / "daemon"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "server", src / "server", ignore=shutil.ignore_patterns("*.egg-info", "build",
                                                                                 "__pycache__"))
    pip = [sys.executable, "-m", "pip"]
    for path in (tmp_path / "client", src):
        subprocess.run([*pip, "wheel", "-q", "--no-deps", str(path), "-w", str(wheels)], check=True, timeout=300)
    report = tmp_path / "report.json"
    subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "-q", "--find-links", str(wheels),
                    "--report", str(report), "memserve"], check=True, timeout=300, capture_output=True)
    chosen = {i["metadata"]["name"]: i["download_info"]["url"] for i in json.loads(report.read_text())["install"]}
    assert chosen["memserve-client"].startswith("file:") and chosen["memserve"].startswith("file:")
    assert "onnx" in chosen and "pytest" not in chosen  # the daemon's runtime requirements, no dev extras
