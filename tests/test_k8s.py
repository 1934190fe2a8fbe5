"""Kubernetes deployment (serving/k8s) and the serving image (serving/docker).

Every overlay renders offline with kubectl's built-in kustomize and validates against the schemas
of a pinned Kubernetes release (kubernetes-validate, strict: unknown fields are errors); the
ServiceMonitor, a prometheus-operator CRD those schemas lack, against the CRD's own schema vendored
from a pinned operator release (serving/k8s/schemas/). The pod's command is checked with the
launcher's own argument parser and flag builder, so ports, probes and flags have one definition;
and the CPU pod's two commands (init container fetch, then the launcher) run here for real: a real
exported version, fetched over HTTP, served by a real Triton, answered over gRPC.
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import http.server
import inspect
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import kubernetes_validate
import numpy as np
import pytest
import yaml
from packaging.requirements import Requirement

from serving import __main__ as serving_cli
from serving.k8s import fetch_model
from serving.launcher import TritonServer, free_ports

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S = REPO_ROOT / "serving" / "k8s"
DOCKER = REPO_ROOT / "serving" / "docker"
OVERLAYS = ("cpu", "gpu")
# The release the manifests are validated for: kubectl in CI is 1.32; the pod needs >= 1.29
# (gRPC probes: 1.27, native sidecar containers: 1.29).
KUBERNETES_VERSION = "1.32.0"
SERVICEMONITOR_SCHEMA = K8S / "schemas" / "servicemonitor-monitoring-v1.json"
# NVIDIA's container release for each Triton release (NVIDIA's framework support matrix); the
# project's Triton is the one tritonclient is pinned to in requirements.txt.
CONTAINER_RELEASE = {"2.41": "23.12", "2.51": "24.10"}


def load_script(path: Path):
    """A script `docker build` runs by path before any package is installed, imported for its functions."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


image_requirements = load_script(DOCKER / "image_requirements.py")


# ---------------------------------------------------------------------------------------------
# Rendering and schema validation

@functools.cache
def render(overlay: str | Path) -> list[dict]:
    """`kubectl kustomize` of an overlay (a name under serving/k8s/overlays, or a folder)."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed (it renders the kustomize overlays; CI has it)")
    folder = overlay if isinstance(overlay, Path) else K8S / "overlays" / overlay
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: dict, name: str, init: bool = False) -> dict:
    spec = deployment["spec"]["template"]["spec"]
    (found,) = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    return found


def strict(schema):
    """A CRD's structural schema as the API server applies it: unknown fields are rejected
    (pruned, or refused with field validation Strict), like kubernetes-validate --strict."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: strict(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    return schema


@functools.cache
def servicemonitor_validator():
    import jsonschema

    schema = json.loads(SERVICEMONITOR_SCHEMA.read_text())
    schema.pop("$comment")
    return jsonschema.Draft4Validator(strict(schema))  # OpenAPI v3 schemas are Draft 4 in JSON Schema terms


def validate(doc: dict) -> None:
    """Raise for a document the pinned Kubernetes (or the vendored CRD schema) would refuse."""
    if doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "ServiceMonitor":
        servicemonitor_validator().validate(doc)
    else:  # SchemaNotFoundError for anything else: no kind passes unchecked
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_pinned_kubernetes_release_has_schemas():
    versions = kubernetes_validate.utils.all_versions()
    assert KUBERNETES_VERSION in versions, f"kubernetes-validate {kubernetes_validate.__version__} covers {versions[0]}..{versions[-1]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay):
    docs = render(overlay)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service", "Service", "ServiceMonitor"]
    for doc in docs:
        validate(doc)


def test_model_pvc_component_renders_and_validates(tmp_path):
    """The optional PersistentVolumeClaim source, used the way its comments say: from an overlay of one's own."""
    own = tmp_path / "my-overlay"
    own.mkdir()
    k8s = Path(os.path.relpath(K8S, own))  # kustomize takes relative paths only
    (own / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": [str(k8s / "overlays" / "gpu")], "components": [str(k8s / "components" / "model-pvc")]}))
    docs = render(own)
    for doc in docs + [yaml.safe_load((K8S / "components" / "model-pvc" / "upload-pod.yaml").read_text())]:
        validate(doc)
    claim = only(docs, "PersistentVolumeClaim")
    deployment = only(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (mount,) = [m for m in container(deployment, "fetch-model", init=True)["volumeMounts"] if m["mountPath"] == "/exported"]
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"] and mount["readOnly"]
    assert "exported" not in {m["name"] for m in container(deployment, "triton")["volumeMounts"]}  # only the fetcher reads it


def test_validation_rejects_mistakes():
    """The validators are not vacuous: a misspelt field and a wrong type fail, in both kinds of schema."""
    import jsonschema

    docs = render("cpu")
    deployment = copy.deepcopy(only(docs, "Deployment"))
    container(deployment, "triton")["readinesProbe"] = container(deployment, "triton").pop("readinessProbe")
    probe_by_name = copy.deepcopy(only(docs, "Deployment"))
    container(probe_by_name, "triton")["livenessProbe"]["grpc"]["port"] = "grpc"  # gRPC probes take numbers only
    monitor = copy.deepcopy(only(docs, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    monitor_bad_interval = copy.deepcopy(only(docs, "ServiceMonitor"))
    monitor_bad_interval["spec"]["endpoints"][0]["interval"] = "15 seconds"
    for doc in (deployment, probe_by_name, monitor, monitor_bad_interval):
        with pytest.raises(jsonschema.ValidationError):
            validate(doc)
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        validate({"apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "x"}})


# ---------------------------------------------------------------------------------------------
# One definition: the pod's command, ports and probes are the launcher's

def launcher_args(triton: dict) -> list[str]:
    args = triton.get("command", []) + triton["args"]
    assert args[:3] == ["python3", "-m", "serving"], "the pod must run the project's launcher"
    return args[3:]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_the_launcher_on_its_ports(overlay):
    deployment = only(render(overlay), "Deployment")
    triton = container(deployment, "triton")
    try:
        args = serving_cli.parse_args(launcher_args(triton))
    except SystemExit:  # argparse printed which flag it does not know
        pytest.fail(f"`python -m serving` refuses the pod's arguments {launcher_args(triton)}")
    flags = serving_cli.server_from_args(args).command(Path("tritonserver"), None)

    ports = {port["name"]: port["containerPort"] for port in triton["ports"]}
    assert ports == {"grpc": args.grpc_port, "http": args.http_port, "metrics": args.metrics_port}
    for flag in (f"--grpc-port={args.grpc_port}", f"--http-port={args.http_port}", f"--metrics-port={args.metrics_port}",
                 "--grpc-address=0.0.0.0", "--metrics-address=0.0.0.0", "--allow-metrics=true", "--strict-readiness=true"):
        assert flag in flags, flag
    # Probes: Triton's gRPC health service on the launcher's gRPC port.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert triton[probe]["grpc"]["port"] == args.grpc_port, probe
    # The startup probe outlasts the launcher's own wait for the model load.
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= args.timeout
    # The served repository is the volume the init container fills.
    mounts = {mount["name"]: mount for mount in triton["volumeMounts"]}
    assert f"--model-repository={mounts['model-repository']['mountPath']}" in flags
    fetch = container(deployment, "fetch-model", init=True)
    assert f"--to={mounts['model-repository']['mountPath']}" in fetch["args"]
    # The log sidecar streams the file the launcher writes the server's log to.
    sidecar = container(deployment, "triton-log", init=True)
    assert sidecar["restartPolicy"] == "Always" and sidecar["args"][-1] == args.log_file
    (log_mount,) = [m for m in sidecar["volumeMounts"] if args.log_file.startswith(m["mountPath"] + "/")]
    assert mounts[log_mount["name"]]["mountPath"] == log_mount["mountPath"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_shutdown_shared_memory_and_resources(overlay):
    deployment = only(render(overlay), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")
    # Kubernetes' grace period covers preStop, then the launcher's stop (SIGTERM, drain, kill after its timeout).
    pre_stop = triton["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    stop_timeout = inspect.signature(TritonServer.stop).parameters["timeout"].default
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + stop_timeout
    # The Python backend's /dev/shm: memory-backed and bounded.
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    (shm,) = [mount for mount in triton["volumeMounts"] if mount["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[shm["name"]]["emptyDir"]["sizeLimit"]
    for c in spec["containers"] + spec["initContainers"]:
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], c["name"]


def test_gpu_and_cpu_variants():
    gpu, cpu = only(render("gpu"), "Deployment"), only(render("cpu"), "Deployment")
    env = lambda d: {e["name"]: e for e in container(d, "fetch-model", init=True)["env"]}  # noqa: E731
    assert env(gpu)["INSTANCE_KIND"]["value"] == "KIND_GPU" and env(cpu)["INSTANCE_KIND"]["value"] == "KIND_CPU"
    assert container(gpu, "triton")["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in container(cpu, "triton")["resources"]["limits"]
    assert container(gpu, "triton")["image"].endswith(":gpu") and container(cpu, "triton")["image"].endswith(":cpu")
    for deployment in (gpu, cpu):  # one image per pod: the fetcher runs from the serving image
        assert container(deployment, "fetch-model", init=True)["image"] == container(deployment, "triton")["image"]
    # CPU: guaranteed cores, and ONNX Runtime's threads follow the limit.
    resources = container(cpu, "triton")["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]
    assert env(cpu)["ORT_THREADS"]["valueFrom"]["resourceFieldRef"] == {"containerName": "triton", "resource": "limits.cpu", "divisor": "1"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_and_autoscaler_find_the_pods(overlay):
    docs = render(overlay)
    deployment = only(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"] for port in container(deployment, "triton")["ports"]}
    service = only(docs, "Service", "bamsgan")
    for svc in (service, only(docs, "Service", "bamsgan-grpc")):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert {port["targetPort"] for port in svc["spec"]["ports"]} <= ports
    monitor = only(docs, "ServiceMonitor")
    selects = lambda svc: monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()  # noqa: E731
    assert selects(service) and not selects(only(docs, "Service", "bamsgan-grpc"))  # each pod scraped once
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == {"metrics"}
    assert "metrics" in {port["name"] for port in service["spec"]["ports"]}
    hpa = only(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    (rule,) = adapter_rules()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]


def adapter_rules() -> list[dict]:
    return yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())["rules"]["custom"]


def test_adapter_rule_is_queue_time_per_request():
    (rule,) = adapter_rules()
    query = rule["metricsQuery"]
    numerator, denominator = query.split(" / ")
    assert "nv_inference_queue_duration_us{<<.LabelMatchers>>}" in numerator
    assert "nv_inference_request_success{<<.LabelMatchers>>}" in denominator
    assert re.fullmatch(r"\^?nv_inference_queue_duration_us\$?", rule["name"]["matches"])
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


# ---------------------------------------------------------------------------------------------
# The image

def dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def project_triton_release() -> str:
    requirements = [Requirement(line.split("#")[0]) for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                    if line.split("#")[0].strip()]
    (tritonclient,) = [r for r in requirements if r.name == "tritonclient"]
    (version,) = [spec.version for spec in tritonclient.specifier if spec.operator == "=="]
    return ".".join(version.split(".")[:2])


def test_image_is_nvidias_triton_at_the_projects_release():
    release = CONTAINER_RELEASE[project_triton_release()]
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile(), flags=re.M)
    assert base == f"nvcr.io/nvidia/tritonserver:{release}-py3"


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_image_installs_numpy_below_2_and_onnxruntime(gpu):
    requirements = {r.name: r for r in map(Requirement, image_requirements.image_requirements(gpu))}
    assert not requirements["numpy"].specifier.contains("2.0.0") and requirements["numpy"].specifier.contains("1.26.4")
    assert ("onnxruntime-gpu" if gpu else "onnxruntime") in requirements
    assert ("onnxruntime" if gpu else "onnxruntime-gpu") not in requirements
    assert str(requirements["tritonclient"].specifier) == f"=={project_triton_release()}.0"
    # ... and the Dockerfile installs exactly that list.
    text = dockerfile()
    assert "image_requirements.py $gpu > /tmp/bamsgan/serving-requirements.txt" in text
    assert "pip install --no-cache-dir -r /tmp/bamsgan/serving-requirements.txt" in text


def test_image_copies_files_that_exist_and_the_context_keeps():
    """Every COPY source is in the repository and re-included by Dockerfile.dockerignore (which
    excludes everything else: the context is the repository root, .venv and runs/ included)."""
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"
    kept = [line[1:].rstrip("/") for line in ignore if line.startswith("!")]
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile(), flags=re.M)
    assert copies
    for line in copies:
        *sources, _ = line.split()
        for source in sources:
            source = source.rstrip("/")
            assert (REPO_ROOT / source).exists(), source
            assert any(source == k or source.startswith(k + "/") for k in kept), f"{source} is excluded from the build context"


def test_image_runs_the_launcher_and_fetcher_on_the_containers_python():
    """NVIDIA's images have Python 3.10 (23.12) or newer: the code the pod runs must parse there (the launcher,
    the fetcher, and what a model version carries into the Python backend's stub)."""
    text = dockerfile()
    assert re.search(r"^COPY serving/ serving/$", text, flags=re.M)
    assert re.search(r"^COPY model_repository/bamsgan/config.pbtxt model_repository/bamsgan/config.pbtxt$", text, flags=re.M)
    assert re.search(r"^WORKDIR /opt/bamsgan$", text, flags=re.M)
    version_code = [*(REPO_ROOT / "serving" / "python_backend").glob("*.py"), REPO_ROOT / "training" / "latents.py"]
    for path in [*(REPO_ROOT / "serving").glob("*.py"), *K8S.glob("*.py"), DOCKER / "image_requirements.py", *version_code]:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))


# ---------------------------------------------------------------------------------------------
# The init container's fetcher

def make_archive(version_dir: Path, archive: Path) -> str:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(version_dir, arcname=version_dir.name)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def http_files(tmp_path_factory):
    """A real HTTP server on a free port serving a temporary folder (the model store)."""
    root = tmp_path_factory.mktemp("store")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # quiet: pytest shows what matters
            pass

    handler = functools.partial(Handler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_fetch_from_http_with_checksum(published_version, http_files, tmp_path):
    root, url = http_files
    digest = make_archive(published_version.version_dir, root / "bamsgan-1.tar.gz")
    repository = tmp_path / "models"
    version = fetch_model.fetch(f"{url}/bamsgan-1.tar.gz", repository, fetch_model.DEFAULT_CONFIG, digest, "KIND_GPU", 3,
                                log=lambda line: None)
    assert version == repository / "bamsgan" / "1"
    assert tree(version) == tree(published_version.version_dir)
    config = parse_config(repository / "bamsgan" / "config.pbtxt")
    tracked = parse_config(fetch_model.DEFAULT_CONFIG)
    assert [group.kind for group in config.instance_group] == [config.instance_group[0].KIND_GPU]
    assert config.parameters["ort_threads"].string_value == "3"
    # Everything else is the tracked configuration, untouched.
    tracked.instance_group[0].kind = config.instance_group[0].kind
    tracked.parameters["ort_threads"].string_value = "3"
    assert config == tracked
    assert sorted(p.name for p in repository.iterdir()) == ["bamsgan"]  # no scratch left behind


def test_fetch_from_a_mounted_directory_runs_again_but_never_overwrites(published_version, tmp_path):
    repository = tmp_path / "models"
    for _ in range(2):  # an init container that runs again in the same pod keeps its own result
        version = fetch_model.fetch(str(published_version.version_dir), repository, fetch_model.DEFAULT_CONFIG,
                                    instance_kind="KIND_CPU", log=lambda line: None)
    assert tree(version) == tree(published_version.version_dir)
    config = parse_config(repository / "bamsgan" / "config.pbtxt")
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    # Someone's different version 1, or a config with other settings, is never overwritten.
    before = tree(repository)
    with pytest.raises(fetch_model.FetchError, match="not overwritten"):
        fetch_model.fetch(str(published_version.version_dir), repository, fetch_model.DEFAULT_CONFIG,
                          instance_kind="KIND_GPU", log=lambda line: None)
    assert tree(repository) == before
    (version / "metadata.json").write_text((version / "metadata.json").read_text() + " ")
    before = tree(repository)
    with pytest.raises(fetch_model.FetchError, match="already holds a different version 1"):
        fetch_model.fetch(str(published_version.version_dir), repository, fetch_model.DEFAULT_CONFIG,
                          instance_kind="KIND_CPU", log=lambda line: None)
    assert tree(repository) == before


def broken_sources(version_dir: Path, tmp_path: Path, url: str, store: Path) -> dict[str, tuple[list[str], str]]:
    """{case: (fetch_model.py arguments, words of the one-line error)}."""
    no_onnx = tmp_path / "no-onnx" / "2"
    shutil.copytree(version_dir, no_onnx)
    (no_onnx / "generator.onnx").unlink()
    unnamed = tmp_path / "latest"
    shutil.copytree(version_dir, unnamed)
    two = tmp_path / "two"
    shutil.copytree(version_dir, two / "1")
    shutil.copytree(version_dir, two / "2")
    with tarfile.open(store / "two.tar.gz", "w:gz") as tar:
        tar.add(two / "1", arcname="1")
        tar.add(two / "2", arcname="2")
    (store / "junk.tar.gz").write_bytes(b"not an archive")
    good = make_archive(version_dir, store / "good.tar.gz")
    return {
        "missing path": ([str(tmp_path / "nowhere.tar.gz")], "does not exist"),
        "http 404": ([f"{url}/nowhere.tar.gz"], "cannot download"),
        "unsupported URL": (["s3://bucket/bamsgan-1.tar.gz"], "use an http(s):// or file:// URL"),
        "incomplete version": ([str(no_onnx)], "missing generator.onnx"),
        "unnumbered directory": ([str(unnamed)], "named by its number"),
        "two versions in one archive": ([f"{url}/two.tar.gz"], "exactly one version directory"),
        "not an archive": ([f"{url}/junk.tar.gz"], "not a readable .tar.gz"),
        "wrong checksum": ([f"{url}/good.tar.gz", "--sha256", ("0" if good[0] != "0" else "1") * 64], "expected"),
    }


def test_fetch_refuses_bad_sources_with_one_line_and_writes_nothing(published_version, http_files, tmp_path):
    store, url = http_files
    for case, (source_args, words) in broken_sources(published_version.version_dir, tmp_path, url, store).items():
        repository = tmp_path / f"models-{case.replace(' ', '-')}"
        with pytest.raises(SystemExit) as error:
            fetch_model.main(["--source", *source_args, "--to", str(repository)])
        message = str(error.value.code)
        assert message.startswith("error: ") and words in message and "\n" not in message, (case, message)
        assert not any(repository.rglob("*")), case  # nothing half-written


def test_fetch_cli_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "serving.k8s.fetch_model", "--source", str(tmp_path / "none"), "--to", str(tmp_path / "m")],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# The CPU pod, run here: its init container's command, then its server's command

def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' $(VAR) expansion in a container's args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), arg) for arg in args]


def pod_env(docs: list[dict], deployment: dict, init_container: dict) -> dict[str, str]:
    env = {}
    for source in init_container.get("envFrom", []):
        configmap = only(docs, "ConfigMap", source["configMapRef"]["name"])
        env.update(configmap["data"])
    for item in init_container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # resourceFieldRef limits.cpu with divisor 1: the limit rounded up to whole cores
            ref = item["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == "limits.cpu" and ref["divisor"] == "1"
            limit = container(deployment, ref["containerName"])["resources"]["limits"]["cpu"]
            env[item["name"]] = str(-(-int(limit.rstrip("m")) // 1000) if limit.endswith("m") else int(limit))
    return env


def test_cpu_pod_commands_serve_a_fetched_version(published_version, http_files, tmp_path):
    import tritonclient.grpc as grpcclient

    docs = render("cpu")
    deployment = only(docs, "Deployment")
    fetch, triton = container(deployment, "fetch-model", init=True), container(deployment, "triton")
    store, url = http_files
    digest = make_archive(published_version.version_dir, store / "pod-1.tar.gz")
    env = pod_env(docs, deployment, fetch) | {"MODEL_SOURCE": f"{url}/pod-1.tar.gz", "MODEL_SHA256": digest}
    volume = tmp_path / "models"  # the pod's emptyDir, mounted at /models in both containers
    here = lambda args: [arg.replace("=/models", f"={volume}") for arg in args]  # noqa: E731

    init_args = expand(here(fetch["args"]), env)
    assert init_args[0] == "python3"
    result = subprocess.run([sys.executable, *init_args[1:]], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert parse_config(volume / "bamsgan" / "config.pbtxt").instance_group[0].kind == parse_config(
        volume / "bamsgan" / "config.pbtxt").instance_group[0].KIND_CPU

    grpc_port, http_port, metrics_port = free_ports(3)  # the pod's ports are taken here: move them
    server_args = here(launcher_args(triton)) + [f"--grpc-port={grpc_port}", f"--http-port={http_port}",
                                                 f"--metrics-port={metrics_port}", f"--log-file={tmp_path / 'triton.log'}"]
    server = subprocess.Popen([sys.executable, "-m", "serving", *server_args], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
            deadline = time.monotonic() + 120
            while not _ready(client):
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "server not ready"
                time.sleep(0.2)
            seeds = grpcclient.InferInput("SEED", [2, 1], "INT64")
            seeds.set_data_from_numpy(np.array([[0], [7]], dtype=np.int64))
            images = client.infer("bamsgan", [seeds]).as_numpy("IMAGE")
            assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
        # The autoscaler's inputs exist on this pod's metrics endpoint, per model.
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        for name in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
            assert re.search(rf'^{name}{{model="bamsgan",version="1"}} \d', metrics, flags=re.M), name
    finally:
        server.send_signal(signal.SIGTERM)  # what the kubelet sends: a clean drain, exit 0
        try:
            code = server.wait(90)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        output = server.stdout.read()
    assert code == 0, output


def _ready(client) -> bool:
    try:
        return client.is_server_ready() and client.is_model_ready("bamsgan")
    except Exception:  # not listening yet
        return False
