"""deploy/: the Dockerfile and the Kubernetes and KServe manifests, parsed and checked for what makes them
safe on a network (docs/serving.md, "Security"). None of them runs here (no Docker engine, no cluster);
tests/test_serve.py checks their command lines, ports and paths against the real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vitrt.serving.security import MAX_HTTP_INPUT_BYTES, MIN_SAFE_NGC, _key

yaml = pytest.importorskip("yaml")
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ADMIN_PATHS = ("/v2/systemsharedmemory", "/v2/cudasharedmemory", "/v2/repository", "/v2/logging", "/v2/trace")


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def kind(name: str, k: str) -> list[dict]:
    return [d for d in docs(name) if d["kind"] == k]


def pods() -> list[tuple[str, dict, dict]]:
    """(manifest, pod spec, labels) of every workload."""
    (dep,) = kind("kubernetes.yaml", "Deployment")
    (isvc,) = kind("kserve.yaml", "InferenceService")
    return [("kubernetes.yaml", dep["spec"]["template"]["spec"], dep["spec"]["template"]["metadata"]["labels"]),
            ("kserve.yaml", isvc["spec"]["predictor"], {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]})]


@pytest.mark.parametrize("manifest, pod, labels", pods(), ids=["kubernetes", "kserve"])
def test_pods_run_unprivileged_with_a_read_only_root(manifest, pod, labels):
    assert pod["automountServiceAccountToken"] is False
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0 and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsUser"] == dockerfile_user()  # the image's own user
    mounts_of = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"] == {"drop": ["ALL"]}
        assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["memory"]
        env = {e["name"]: e for e in c["env"]}
        assert env["VITRT_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"  # from a Secret, no literal
        assert "value" not in env["VITRT_ADMIN_TOKEN"]
        # a read-only root: what vitrt serve writes (its temp repository, caches) and the backend's shared
        # memory are volumes
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert env["TMPDIR"]["value"] in mounts and "emptyDir" in mounts_of[mounts[env["TMPDIR"]["value"]]]
        assert mounts_of[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("manifest, pod, labels", pods(), ids=["kubernetes", "kserve"])
def test_network_policy_opens_data_ports_to_the_ingress_and_metrics_to_monitoring_only(manifest, pod, labels):
    (policy,) = kind(manifest, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"} and spec["egress"] == []  # nothing out
    from vitrt.cli import build_parser

    args = build_parser().parse_args(pod["containers"][0]["command"][1:])
    allowed = {}
    for rule in spec["ingress"]:
        (peer,) = rule["from"]
        assert set(peer) == {"namespaceSelector"}  # whole namespaces by their immutable name label
        ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for port in rule["ports"]:
            allowed[port["port"]] = ns
    want = {args.http_port: "ingress-nginx", args.metrics_port: "monitoring"}
    if args.grpc_port:
        want[args.grpc_port] = "ingress-nginx"
    assert allowed == want


@pytest.mark.parametrize("manifest, pod, labels", pods(), ids=["kubernetes", "kserve"])
def test_grpc_is_served_only_behind_a_gateway_that_caps_it(manifest, pod, labels):
    """Triton caps no gRPC message: a manifest serves gRPC only where it ships a gRPC Ingress with the body
    cap (kubernetes.yaml); kserve.yaml, whose ingress KServe generates, serves HTTP only (--grpc-port 0)
    and opens no gRPC port. Before, kserve.yaml served gRPC on 8001 with nothing capping it."""
    from vitrt.cli import build_parser

    (c,) = pod["containers"]
    args = build_parser().parse_args(c["command"][1:])
    capped = [i for i in kind(manifest, "Ingress")
              if i["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC"
              and i["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/proxy-body-size")
              == f"{MAX_HTTP_INPUT_BYTES // 2**20}m"]
    if not capped:
        assert args.grpc_port == 0, f"{manifest} serves gRPC on {args.grpc_port} with no gateway capping it"
        assert {p["containerPort"] for p in c.get("ports", [])} <= {args.http_port, args.metrics_port}
        assert not any(p.get("name") in ("h2c", "grpc") for p in c.get("ports", []))
    else:
        assert args.grpc_port > 0


def test_ingress_terminates_tls_authenticates_limits_and_routes_no_admin_api():
    (service,) = kind("kubernetes.yaml", "Service")
    ports = {p["name"] for p in service["spec"]["ports"]}
    ingresses = kind("kubernetes.yaml", "Ingress")
    assert len(ingresses) == 2
    for ing in ingresses:
        a = ing["metadata"]["annotations"]
        spec = ing["spec"]
        hosts = {r["host"] for r in spec["rules"]}
        assert spec["ingressClassName"] == "nginx" and hosts <= {h for t in spec["tls"] for h in t["hosts"]}
        assert all(t["secretName"] for t in spec["tls"]) and a["nginx.ingress.kubernetes.io/force-ssl-redirect"] == "true"
        assert a.get("nginx.ingress.kubernetes.io/auth-type") == "basic" or "nginx.ingress.kubernetes.io/auth-url" in a
        # the cap of HTTP and of gRPC alike: Triton caps no gRPC message (docs/serving.md, "What caps what")
        assert a["nginx.ingress.kubernetes.io/proxy-body-size"] == f"{MAX_HTTP_INPUT_BYTES // 2**20}m"
        for t in ("connect", "send", "read"):
            assert 0 < int(a[f"nginx.ingress.kubernetes.io/proxy-{t}-timeout"]) <= 120
        assert int(a["nginx.ingress.kubernetes.io/limit-rps"]) > 0
        if a.get("nginx.ingress.kubernetes.io/backend-protocol") != "GRPC":
            # bodies read whole by nginx: Triton never parses a client's chunked encoding (CVE-2025-23310)
            assert a["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
        for rule in spec["rules"]:
            for path in rule["http"]["paths"]:
                assert path["pathType"] == "Exact", path  # nothing routed by prefix
                assert not path["path"].startswith(ADMIN_PATHS) and not path["path"].endswith("/stats")
                assert "SharedMemory" not in path["path"] and "Repository" not in path["path"]
                assert path["backend"]["service"]["name"] == service["metadata"]["name"]
                assert path["backend"]["service"]["port"]["name"] in ports
    grpc = [i for i in ingresses if i["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/backend-protocol") == "GRPC"]
    assert len(grpc) == 1, "a gRPC Ingress: the only layer that caps a gRPC message"
    routes = [p for r in grpc[0]["spec"]["rules"] for p in r["http"]["paths"]]
    assert {p["backend"]["service"]["port"]["name"] for p in routes} == {"grpc"}
    # unary methods only: a stream's messages would add up against one body cap
    assert {p["path"].rsplit("/", 1)[1] for p in routes} == {"ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady"}
    (config,) = kind("kubernetes.yaml", "ConfigMap")  # the controller's header and slow-client limits
    assert config["data"]["large-client-header-buffers"] and int(config["data"]["client-header-timeout"]) <= 60


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_user() -> int:
    (user,) = re.findall(r"^USER\s+(\S+)", dockerfile(), re.M)
    return int(user.split(":")[0])


def test_dockerfile_runs_a_patched_triton_as_a_non_root_user():
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile(), re.M)
    image, tag = base.rsplit(":", 1)
    assert image == "nvcr.io/nvidia/tritonserver" and tag.endswith("-py3")
    assert _key(tag[: -len("-py3")]) >= _key(MIN_SAFE_NGC), f"{tag} predates the newest fixing release {MIN_SAFE_NGC}"
    assert dockerfile_user() not in (0,) and dockerfile_user() >= 1000
    text = dockerfile()
    assert "nvidia-pytriton" not in re.sub(r"#.*", "", text)  # the bundled 2.51 must not come back in
    assert re.search(r'^ENTRYPOINT \["vitrt", "serve"\]', text, re.M)
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(re.findall(r"^ENV\s+(.*)$", text, re.M))))
    assert env["TMPDIR"] == "/tmp" and env["HOME"] == "/tmp"  # writable only where the manifests mount an emptyDir
