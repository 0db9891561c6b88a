"""deploy/: what this machine can check without a container engine or a cluster.

The manifests are parsed and checked for what a rolling upgrade with live streams depends on:
probes on the right paths, a grace period longer than the drain, a disruption budget; and for
what keeps them safe where they run: keys before a gateway is reachable, a pinned image, Pod
Security's "restricted" level, services that come back. The Dockerfile is read for its user,
healthcheck and PID 1. (nginx's config runs for real in test_nginx.py.)
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from server import __version__
from server.cli import SHUTDOWN_TIMEOUT
from server.lifecycle import FINAL_EVENT_GRACE
from server.settings import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def drain_budget() -> float:
    """Seconds from SIGTERM to exit at most: the drain, the final events, aiohttp's own shutdown."""
    return load_settings(environ={}).server.drain_timeout + FINAL_EVENT_GRACE + SHUTDOWN_TIMEOUT


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def kubernetes() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "sluice.yaml").read_text()) if doc]
    return {doc["kind"]: doc for doc in docs}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def test_the_image_runs_as_a_numeric_non_root_user() -> None:
    users = [args for instruction, args in dockerfile() if instruction == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].isdigit()
    assert int(users[-1]) != 0


def test_the_image_healthcheck_asks_livez() -> None:
    (check,) = [args for instruction, args in dockerfile() if instruction == "HEALTHCHECK"]
    assert "/livez" in check
    assert "/readyz" not in check


def test_run_py_is_pid_1_so_sigterm_reaches_the_drain() -> None:
    (entrypoint,) = [args for instruction, args in dockerfile() if instruction == "ENTRYPOINT"]
    argv = json.loads(entrypoint)  # exec form: no shell in between to swallow the signal
    assert argv[:2] == ["python", "run.py"]
    assert not [args for instruction, args in dockerfile() if instruction == "CMD"]


def test_the_image_listens_on_port_so_a_platform_may_choose_it() -> None:
    (entrypoint,) = [args for instruction, args in dockerfile() if instruction == "ENTRYPOINT"]
    assert "--port" not in json.loads(entrypoint)  # run.py takes PORT when --port is not given
    assert ("ENV", "PORT=8080") in dockerfile()
    (check,) = [args for instruction, args in dockerfile() if instruction == "HEALTHCHECK"]
    assert "os.environ['PORT']" in check


def test_the_deployment_runs_this_releases_image_from_a_registry() -> None:
    """`sluice:latest` with IfNotPresent: a node holding an older :latest kept running it after a rebuild."""
    sluice = container(kubernetes()["Deployment"])
    name, _, tag = sluice["image"].split("@")[0].rpartition(":")
    registry = name.split("/")[0]
    assert "." in registry or ":" in registry  # a registry host, not an image only a node may hold
    assert tag == __version__
    assert sluice["imagePullPolicy"] == "IfNotPresent"  # a pinned tag: the node's copy is the release's


def test_nginx_drops_idle_connections_before_sluice_does() -> None:
    conf = (DEPLOY / "nginx" / "sluice.conf").read_text()
    (seconds,) = re.findall(r"keepalive_timeout (\d+)s;", conf)
    assert int(seconds) < load_settings(environ={}).connections.header_timeout


def test_nginx_lets_sluice_answer_a_body_over_sluices_own_limit() -> None:
    """Over nginx's limit the client gets nginx's HTML 413; over Sluice's, the JSON 413 naming it."""
    conf = (DEPLOY / "nginx" / "sluice.conf").read_text()
    ((size, unit),) = re.findall(r"client_max_body_size (\d+)([kmg]?);", conf)
    nginx_limit = int(size) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]
    assert nginx_limit > load_settings(environ={}).server.max_body_bytes


def test_the_deployment_probes_readiness_on_readyz_and_liveness_on_livez() -> None:
    sluice = container(kubernetes()["Deployment"])
    assert sluice["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sluice["livenessProbe"]["httpGet"]["path"] == "/livez"
    ports = {port["name"]: port["containerPort"] for port in sluice["ports"]}
    assert sluice["readinessProbe"]["httpGet"]["port"] in ports
    assert sluice["livenessProbe"]["httpGet"]["port"] in ports


def test_the_grace_period_outlasts_pre_stop_and_the_whole_drain() -> None:
    deployment = kubernetes()["Deployment"]
    pre_stop = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop[1]) + drain_budget()


def test_a_rollout_never_takes_a_pod_away_before_its_replacement_is_ready() -> None:
    spec = kubernetes()["Deployment"]["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_disruption_budget_and_the_service_select_the_deployment_pods() -> None:
    docs = kubernetes()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    budget = docs["PodDisruptionBudget"]["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] >= 1
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    target = docs["Service"]["spec"]["ports"][0]["targetPort"]
    assert target in {port["name"] for port in container(docs["Deployment"])["ports"]}


def test_the_pod_runs_as_the_image_user_without_root() -> None:
    spec = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    users = [args for instruction, args in dockerfile() if instruction == "USER"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == users[-1]


def test_the_pod_meets_pod_security_restricted() -> None:
    """Without a seccomp profile a namespace enforcing Pod Security "restricted" refused the pod."""
    spec = kubernetes()["Deployment"]["spec"]["template"]["spec"]
    sluice = container(kubernetes()["Deployment"])
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert sluice["securityContext"]["allowPrivilegeEscalation"] is False
    assert sluice["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_pod_holds_no_service_account_token() -> None:
    """Sluice never calls the Kubernetes API: a token in the pod would only be there to be stolen."""
    assert kubernetes()["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_the_deployment_cannot_start_without_its_upstream_key() -> None:
    """With the key optional, a Secret whose key was misnamed gave a ready pod serving the simulated model."""
    env = {variable["name"]: variable for variable in container(kubernetes()["Deployment"])["env"]}
    reference = env["AI_INTEGRATIONS_OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert reference.get("optional", False) is False


def test_one_failed_readiness_probe_does_not_take_a_pod_out() -> None:
    """At failureThreshold 1 a single probe slow behind a burst of work took the pod out of the Service."""
    assert container(kubernetes()["Deployment"])["readinessProbe"]["failureThreshold"] >= 2


@pytest.fixture
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DEPLOY / "compose.yaml").read_text()))


def test_compose_runs_two_instances_on_one_redis_behind_nginx_with_the_shipped_config(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    instances = [name for name, service in services.items() if service.get("image") == "sluice:latest"]
    assert len(instances) == 2
    for name in instances:
        assert services[name]["environment"]["SLUICE_REDIS_URL"].startswith("redis://redis:")
        assert float(services[name]["stop_grace_period"].removesuffix("s")) > drain_budget()
    assert "redis" in services
    assert "./nginx/sluice.conf:/etc/nginx/conf.d/default.conf:ro" in services["nginx"]["volumes"]
    shipped = (DEPLOY / "nginx" / "sluice.conf").read_text()
    upstreams = re.findall(r"^\s*server ([\w.-]+):(\d+)", shipped, flags=re.MULTILINE)
    assert sorted(host for host, _ in upstreams) == sorted(instances)
    assert {port for _, port in upstreams} == {"8080"}


def test_compose_instances_take_the_client_from_nginxs_forwarded_for(compose: dict[str, Any]) -> None:
    """Without trusted proxies every access line's `client` was nginx's address."""
    environment = compose["services"]["sluice-1"]["environment"]
    settings = load_settings(environ={"SLUICE_SERVER_TRUSTED_PROXIES": environment["SLUICE_SERVER_TRUSTED_PROXIES"]})
    nginx = ipaddress.ip_address("172.18.0.4")  # an address of compose's default network
    assert any(nginx in network for network in settings.server.trusted_proxies)
    assert "ports" not in compose["services"]["sluice-1"]  # only nginx, on that network, reaches them


def test_compose_publishes_its_open_gateway_on_loopback_only(compose: dict[str, Any]) -> None:
    """Published as "8080:8080", a gateway without keys, holding the upstream key, was on every interface."""
    published = [port for service in compose["services"].values() for port in service.get("ports", [])]
    assert published
    for port in published:
        parts = str(port).split(":")  # host address, host port, container port
        assert len(parts) == 3, port
        assert parts[0] == "127.0.0.1", port


def test_every_compose_service_comes_back_after_a_crash_or_a_reboot(compose: dict[str, Any]) -> None:
    """Only the instances restarted: a Redis or an nginx that exited stayed down."""
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name


def test_compose_starts_nginx_once_both_instances_pass_their_healthcheck(compose: dict[str, Any]) -> None:
    """nginx resolves the instances' names at start, and exits if one is not there yet."""
    services = compose["services"]
    instances = {name for name, service in services.items() if service.get("image") == "sluice:latest"}
    assert services["nginx"]["depends_on"] == {name: {"condition": "service_healthy"} for name in instances}
    assert [args for instruction, args in dockerfile() if instruction == "HEALTHCHECK"]  # what makes one healthy


def test_the_deployment_serves_the_keys_of_a_config_it_cannot_start_without() -> None:
    """The shipped Deployment was an open gateway holding the upstream key, behind a Service."""
    deployment = kubernetes()["Deployment"]
    sluice = container(deployment)
    config = sluice["args"][sluice["args"].index("--config") + 1]
    mounts = {mount["name"]: mount["mountPath"] for mount in sluice["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in deployment["spec"]["template"]["spec"]["volumes"]}
    (volume,) = [name for name, path in mounts.items() if config.startswith(path + "/")]
    assert "optional" not in volumes[volume]["configMap"]  # no config, no pod
    env = {variable["name"]: variable for variable in sluice["env"]}
    assert "optional" not in env["SLUICE_AUTH_SECRET"]["valueFrom"]["secretKeyRef"]


def test_the_deployments_kept_browser_events_fit_well_inside_its_memory_limit() -> None:
    """At the default 1 GiB budget and a 1 GiB limit the kernel killed the pod before Sluice shed a stream."""
    sluice = container(kubernetes()["Deployment"])
    env = {variable["name"]: variable.get("value") for variable in sluice["env"]}
    limit = sluice["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert int(env["SLUICE_BROWSER_MAX_KEPT_BYTES"]) <= int(limit.removesuffix("Gi")) * 2**30 // 2


def test_the_pods_get_no_variables_for_the_namespaces_services() -> None:
    """Service links would give each pod SLUICE_SERVICE_HOST and the like for the Service `sluice`."""
    assert kubernetes()["Deployment"]["spec"]["template"]["spec"]["enableServiceLinks"] is False
