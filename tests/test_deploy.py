"""The files an operator runs several replicas with (#15), checked offline: the Dockerfile's
health check and stop signal, deploy/haproxy.cfg (by HAProxy itself, and for real in front
of one `digitrec serve` on loopback), compose.yaml (the Compose Specification's JSON schema,
setting names and values, addresses, health-check routes) and deploy/k8s/ (kubernetes-validate,
strict, at two Kubernetes versions).

Nothing here builds an image, starts compose or talks to a cluster: there is no Docker engine
and no cluster on these machines. A missing HAProxy, kubernetes-validate or compose schema
skips its tests with the reason, and fails them in CI.
"""

from __future__ import annotations

import http.client
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from digitrec.api import create_app
from digitrec.api.server import GRACEFUL_SHUTDOWN_S
from digitrec.config import Settings
from tests.conftest import LiveServer, free_port, in_ci

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
HAPROXY_CFG = DEPLOY / "haproxy.cfg"
GOLDEN_7 = Path(__file__).parent / "golden" / "canvas_transparent_7.png"
# The oldest Kubernetes these manifests claim (autoscaling/v2 and policy/v1 are older), and
# the newest that the installed kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")
SECRET = "k3Y-for-tests-only-0123456789-abcdefghijKLMN"  # stands in for a CHANGE-ME secret
PLACEHOLDER = "CHANGE-ME"


# --- helpers ---------------------------------------------------------------------------------


def unavailable(reason: str) -> None:
    """Skip with the reason; in CI, where every tool is installed, fail instead."""
    if in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def haproxy_binary() -> str:
    found = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        unavailable("HAProxy is not installed (Debian: apt-get install haproxy)")
    assert found is not None
    return found


def setting_names() -> set[str]:
    """Every DIGITREC_* variable that Settings reads."""
    return {f"DIGITREC_{name.upper()}" for name in Settings.model_fields}


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a replica with exactly ``env`` builds them from its environment."""
    for name in list(os.environ):
        if name.startswith("DIGITREC_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def route_path(command: str) -> str:
    """The path of the http://127.0.0.1:8000/... URL in a health-check command."""
    match = re.search(r"https?://[^/\s'\"]+(/[\w./-]*)", command)
    assert match, f"no URL in {command!r}"
    return match.group(1)


class Routes:
    """``"/path" in routes``: the app answers GET /path (matched by the app's own router,
    so routes of included routers count; nothing is loaded or started)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __contains__(self, path: object) -> bool:
        from starlette.routing import Match

        scope = {"type": "http", "method": "GET", "path": path, "root_path": ""}
        return any(r.matches(scope)[0] == Match.FULL for r in self.app.router.routes)


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Routes:
    routes = Routes(create_app(Settings(home=tmp_path_factory.mktemp("routes"))))
    assert "/healthz" in routes and "/no-such-route" not in routes
    return routes


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def dockerfile_instruction(name: str) -> str:
    """One instruction of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", dockerfile())
    lines = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    assert len(lines) == 1, f"expected one {name} in the Dockerfile, found {len(lines)}"
    return lines[0]


def serve_port() -> int:
    """The port the image's `digitrec serve` listens on (its CMD, and EXPOSE)."""
    cmd = json.loads(dockerfile_instruction("CMD").removeprefix("CMD "))
    port = int(cmd[cmd.index("--port") + 1])
    assert dockerfile_instruction("EXPOSE") == f"EXPOSE {port}"
    return port


def drain_s(shutdown_delay: str) -> float:
    """Seconds from SIGTERM to exit at worst: /readyz 503 while still answering, then the
    graceful stop of requests in flight."""
    return float(shutdown_delay) + GRACEFUL_SHUTDOWN_S


def haproxy_variables() -> dict[str, str | None]:
    """The variables deploy/haproxy.cfg expands: name -> its default, None if required."""
    found: dict[str, str | None] = {}
    for line in HAPROXY_CFG.read_text().splitlines():
        code = line.split("#", 1)[0]  # no "#" but in comments
        for name, default in re.findall(r'"\$\{(\w+)(?:-([^}]*))?\}"', code):
            found[name] = default or None
    return found


# --- the Dockerfile ------------------------------------------------------------------------------


def test_dockerfile_installs_what_replicas_need_and_no_pytorch() -> None:
    run = dockerfile_instruction("RUN pip")
    assert '".[serve,postgres,redis]"' in run and "-c requirements.lock" in run
    assert "torch" not in run and "train" not in run
    assert dockerfile_instruction("USER") == "USER 10001"


def test_docker_health_check_asks_whether_alive_on_a_real_route(routes: Routes) -> None:
    """Docker acts on "unhealthy" (Swarm replaces the container): /healthz, not /readyz,
    or a database outage would have every replica killed at once."""
    check = dockerfile_instruction("HEALTHCHECK")
    assert route_path(check) == "/healthz"
    assert "/healthz" in routes
    assert f":{serve_port()}/" in check
    assert dockerfile_instruction("STOPSIGNAL") == "STOPSIGNAL SIGTERM"


# --- HAProxy ---------------------------------------------------------------------------------


def haproxy_env(replicas: list[str], bind: str) -> dict[str, str]:
    env = {**os.environ, "DIGITREC_PROXY_BIND": bind}
    env.update({f"DIGITREC_REPLICA_{i}": address for i, address in enumerate(replicas, 1)})
    return env


def haproxy_check(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(HAPROXY_CFG)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_haproxy_accepts_the_config() -> None:
    """HAProxy's own check, with the replica addresses from the environment: clean with
    addresses it can resolve, still valid with compose's service names (resolved by
    Docker's DNS at run time), and refused when a replica's variable is missing."""
    loopback = ["127.0.0.1:18001", "127.0.0.1:18002", "127.0.0.1:18003"]
    done = haproxy_check(haproxy_env(loopback, "127.0.0.1:18000"))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Configuration file is valid" in output
    assert "[WARNING]" not in output and "[ALERT]" not in output, output

    compose = ["app1:8000", "app2:8000", "app3:8000"]
    done = haproxy_check(haproxy_env(compose, ":8000"))
    assert done.returncode == 0, done.stdout + done.stderr

    env = haproxy_env(loopback[:2], "127.0.0.1:18000")
    env.pop("DIGITREC_REPLICA_3", None)
    assert haproxy_check(env).returncode != 0


def test_haproxy_health_checks_readiness_and_answers_json(routes: Routes) -> None:
    text = HAPROXY_CFG.read_text()
    assert "option httpchk GET /readyz" in text and "/readyz" in routes
    assert re.search(r"default-server inter 1s fall 2 rise 2\b", text)
    assert "option redispatch" in text and "option forwardfor" in text
    servers = re.findall(r'^\s*server (app\d) "\$\{(DIGITREC_REPLICA_\d)\}" check$', text, re.M)
    assert servers == [(f"app{i}", f"DIGITREC_REPLICA_{i}") for i in (1, 2, 3)]
    bodies = re.findall(
        r"^\s*http-error status (\d+) content-type application/json string '([^']*)'", text, re.M
    )
    assert {status for status, _ in bodies} >= {"502", "503", "504"}
    for _, body in bodies:  # the app's error family: {"error": {"code", "message"}}
        error = json.loads(body)["error"]
        assert set(error) == {"code", "message"} and error["code"] and error["message"]


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, http.client.HTTPMessage, Any]:
    """One request to 127.0.0.1:port from the loopback address ``source``; the JSON body."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request(method, path, body=body, headers=dict(headers or {}))
        response = connection.getresponse()
        data = response.read()
        return response.status, response.headers, json.loads(data) if data else None
    finally:
        connection.close()


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except (OSError, http.client.HTTPException, json.JSONDecodeError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{what}: not after {timeout} s (last: {last!r})")


@pytest.fixture
def replica(tmp_path: Path) -> Iterator[LiveServer]:
    """A real `digitrec serve` that trusts the proxy on 127.0.0.1 and allows each client
    one prediction a minute (so the test can see which client the app took it for)."""
    server = LiveServer(
        tmp_path / "replica",
        env={
            "DIGITREC_TRUST_PROXY_HEADERS": "true",
            "DIGITREC_TRUSTED_PROXIES": '["127.0.0.1"]',
            "DIGITREC_RATE_LIMIT_PER_MINUTE": "1",
            "DIGITREC_WEB_RATE_LIMIT_PER_MINUTE": "0",
            "DIGITREC_LOG_PREDICTIONS": "false",
        },
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.mark.server
def test_haproxy_in_front_of_a_real_replica(replica: LiveServer, tmp_path: Path) -> None:
    """deploy/haproxy.cfg for real: a prediction goes through; the app tells clients apart
    by the X-Forwarded-For that HAProxy appends (and a forged one changes nothing); with the
    replica stopped, clients get HAProxy's JSON 503."""
    binary = haproxy_binary()
    port = free_port()
    upstream = f"127.0.0.1:{replica.port}"  # all three servers: the one replica
    log = (tmp_path / "haproxy.log").open("wb")
    proxy = subprocess.Popen(
        [binary, "-db", "-f", str(HAPROXY_CFG)],
        env=haproxy_env([upstream] * 3, f"127.0.0.1:{port}"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: request(port, "GET", "/readyz")[0] == 200, 15, "ready through HAProxy")
        png = GOLDEN_7.read_bytes()
        headers = {"Content-Type": "image/png"}

        def predict(source: str, extra: Mapping[str, str] = {}) -> tuple[int, Any]:
            status, _, answer = request(
                port, "POST", "/api/v1/predict", png, {**headers, **extra}, source
            )
            return status, answer

        status, answer = predict("127.0.0.2")
        assert status == 200, answer
        assert answer["digit"] == 7
        # The same client until its limit (one a minute, after a small burst) says no ...
        for _ in range(20):
            status, answer = predict("127.0.0.2")
            if status != 200:
                break
        assert status == 429 and answer["error"]["code"] == "rate_limited", answer
        # ... and a forged X-Forwarded-For does not make it someone else,
        status, answer = predict("127.0.0.2", {"X-Forwarded-For": "198.51.100.9"})
        assert status == 429, answer
        # while another client, through the same proxy, has its own limit.
        status, answer = predict("127.0.0.3")
        assert status == 200, answer

        assert replica.stop() == 0
        status, reply_headers, answer = wait_for(
            lambda: (r := request(port, "POST", "/api/v1/predict", png, headers))[0] == 503 and r,
            10,
            "HAProxy's 503 once the replica is gone",
        )
        assert reply_headers["Content-Type"] == "application/json"
        assert reply_headers["Retry-After"] == "5"
        assert answer["error"]["code"] == "unavailable", answer
        assert request(port, "GET", "/readyz")[0] == 503
        assert proxy.poll() is None, "HAProxy exited"
    finally:
        proxy.terminate()
        try:
            proxy.wait(10)
        except subprocess.TimeoutExpired:
            proxy.kill()
            proxy.wait()
        log.close()


# --- compose.yaml --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(document, dict)
    return document


def app_services(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image built from the Dockerfile."""
    return {name: s for name, s in compose["services"].items() if s.get("build") == "."}


def replicas(compose: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The app services that serve (every one but those behind a profile, like admin)."""
    return {n: s for n, s in app_services(compose).items() if not s.get("profiles")}


def example_env() -> dict[str, str]:
    """deploy/compose.env.example, its commented-out optional lines included."""
    values = {}
    for line in (DEPLOY / "compose.env.example").read_text().splitlines():
        line = line.strip().removeprefix("# ")
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(\S*)(\s+#.*)?", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, from ``variables``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in variables:
            return variables[name]
        assert op != ":?", f"compose stops here: {arg}"
        assert op == ":-", f"${{{name}}} has no value and no default"
        return arg

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


def compose_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        unavailable("check-jsonschema (it ships the Compose Specification's schema) is missing")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations)))
    return json.loads((path / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())


def test_compose_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    """The Compose Specification's JSON schema, as vendored by check-jsonschema (no
    `docker compose` here to ask)."""
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker()
    )
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose)
    ]
    assert not errors, errors


def test_compose_replicas_run_on_real_settings(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every DIGITREC_* variable a replica gets is a setting, and the values (filled in from
    deploy/compose.env.example, the secret replaced) make valid Settings."""
    known = setting_names()
    variables = {**example_env(), "DIGITREC_SECRET_KEY": SECRET, "POSTGRES_PASSWORD": "pw"}
    assert set(replicas(compose)) == {"app1", "app2", "app3"}
    for name, service in app_services(compose).items():
        env = service["environment"]
        assert set(env) <= known, f"{name}: not settings: {set(env) - known}"
        values = {k: interpolate(str(v), variables) for k, v in env.items()}
        settings = settings_from(values, monkeypatch)
        assert settings.database.startswith("postgresql+psycopg://digitrec:pw@postgres:5432/")
        assert settings.secret_key is not None
        assert settings.trust_proxy_headers
    example = {k for k in example_env() if k.startswith("DIGITREC_")}
    assert example <= known, f"not settings: {example - known}"
    # A placeholder left in .env stops the server at start, rather than signing tokens.
    with pytest.raises(ValidationError, match="too weak"):
        Settings(secret_key=example_env()["DIGITREC_SECRET_KEY"])
    assert example_env()["DIGITREC_SECRET_KEY"] == PLACEHOLDER
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_compose_addresses_agree_with_haproxy(compose: dict[str, Any]) -> None:
    """HAProxy gets every variable its config needs; each replica address is an app
    service on the image's port; HAProxy listens where it is published, on the address the
    replicas trust; Prometheus scrapes each replica."""
    services = compose["services"]
    proxy = services["haproxy"]
    env = proxy["environment"]
    needed = haproxy_variables()
    missing = {name for name, default in needed.items() if default is None} - set(env)
    assert not missing, f"haproxy.cfg needs {missing}"
    assert set(env) <= set(needed)
    port = serve_port()
    assert [env[f"DIGITREC_REPLICA_{i}"] for i in (1, 2, 3)] == [
        f"{name}:{port}" for name in sorted(replicas(compose))
    ]
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]

    bind_port = env["DIGITREC_PROXY_BIND"].rsplit(":", 1)[1]
    assert [p.rsplit(":", 1)[1] for p in proxy["ports"]] == [bind_port]
    assert interpolate(proxy["ports"][0], {}).startswith("8000:")

    address = ipaddress.ip_address(proxy["networks"]["backend"]["ipv4_address"])
    subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert address in ipaddress.ip_network(subnet)
    for name, service in replicas(compose).items():
        assert service["networks"] == ["backend"], name
        assert service["environment"]["DIGITREC_TRUST_PROXY_HEADERS"] == "true"
        assert json.loads(service["environment"]["DIGITREC_TRUSTED_PROXIES"]) == [str(address)]
        assert set(service["depends_on"]) == {"postgres", "redis"}
        assert name in proxy["depends_on"]

    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (targets,) = job["static_configs"]
    assert targets["targets"] == [f"{name}:{port}" for name in sorted(replicas(compose))]
    assert services["prometheus"]["profiles"] == ["monitoring"]


def test_compose_health_checks_and_start_order(compose: dict[str, Any], routes: Routes) -> None:
    services = compose["services"]
    for name, service in replicas(compose).items():
        assert route_path(" ".join(service["healthcheck"]["test"])) == "/healthz", name
        for dependency, condition in service["depends_on"].items():
            assert condition == {"condition": "service_healthy"}, name
            assert services[dependency]["healthcheck"]["test"], dependency
    assert "/healthz" in routes and "/metrics" in routes
    assert services["postgres"]["image"].startswith("postgres:15")
    assert services["redis"]["image"].startswith("redis:7")
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert "ping" in services["redis"]["healthcheck"]["test"]


def test_compose_registry_is_read_only_and_the_drain_fits(compose: dict[str, Any]) -> None:
    """Replicas read the model registry and never write it (only the admin service does);
    their root file system is read-only; docker waits longer than a replica drains."""
    for name, service in app_services(compose).items():
        models_dir = service["environment"]["DIGITREC_MODELS_DIR"]
        mounts = [v for v in service["volumes"] if v.split(":")[1] == models_dir]
        assert len(mounts) == 1, name
        assert mounts[0].endswith(":ro") == (name != "admin"), name
    for name, service in replicas(compose).items():
        assert service["read_only"] is True and "/tmp" in service["tmpfs"], name
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert grace > drain_s(service["environment"]["DIGITREC_SHUTDOWN_DELAY_S"]), name
    assert "models" in compose["volumes"]


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_resources() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in deploy/k8s/ but the kustomization, by (kind, name)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_documents(path):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_strictly(version: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install kubernetes-validate)")
    problems = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml_documents(path):
            where = f"{path.name} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{where}: {exc.message}")
    assert not problems, problems


def test_kustomization_applies_everything_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.yaml"}
    (image,) = kustomization["images"]
    deployment = k8s_resources()[("Deployment", "digitrec")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].split(":")[0] == image["name"]


def test_k8s_settings_are_real_and_placeholders_fail_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resources = k8s_resources()
    config = resources[("ConfigMap", "digitrec-config")]["data"]
    secret = resources[("Secret", "digitrec-secrets")]["stringData"]
    known = setting_names()
    assert set(config) <= known, f"not settings: {set(config) - known}"
    assert set(secret) <= known, f"not settings: {set(secret) - known}"
    assert not set(config) & set(secret)
    # The template's values are placeholders, and the one that would sign tokens with a
    # guessable key stops the server instead.
    assert secret["DIGITREC_SECRET_KEY"] == PLACEHOLDER
    assert PLACEHOLDER in secret["DIGITREC_DATABASE_URL"]
    with pytest.raises(ValidationError, match="too weak"):
        settings_from({**config, **secret}, monkeypatch)
    settings = settings_from({**config, **secret, "DIGITREC_SECRET_KEY": SECRET}, monkeypatch)
    assert settings.trust_proxy_headers and settings.workers == 1
    # The database and Redis are reached through the ExternalName services.
    external = {
        name
        for (kind, name), r in resources.items()
        if r.get("spec", {}).get("type") == "ExternalName"
    }
    assert external == {"digitrec-postgres", "digitrec-redis"}
    assert "@digitrec-postgres:5432/" in secret["DIGITREC_DATABASE_URL"]
    assert secret["DIGITREC_REDIS_URL"].startswith("redis://digitrec-redis:6379/")


def test_k8s_deployment_fits_the_app(routes: Routes) -> None:
    """Probes on real routes (ready: /readyz; alive: /healthz), the image's port and user,
    a read-only root with the two folders the app writes, the registry read-only, a grace
    period longer than the drain, and every name that ties the manifests together."""
    resources = k8s_resources()
    deployment = resources[("Deployment", "digitrec")]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": serve_port(), "protocol": "TCP"}

    uid = int(dockerfile_instruction("USER").split()[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources_ = container["resources"]
    assert set(resources_) == {"requests", "limits"}
    assert set(resources_["requests"]) == set(resources_["limits"]) == {"cpu", "memory"}

    config = resources[("ConfigMap", "digitrec-config")]["data"]
    assert pod["terminationGracePeriodSeconds"] > drain_s(config["DIGITREC_SHUTDOWN_DELAY_S"])
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"digitrec-config", "digitrec-secrets"}

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    home = re.search(r"DIGITREC_HOME=(\S+)", dockerfile())
    assert home and {"/tmp", home.group(1), config["DIGITREC_MODELS_DIR"]} == set(mounts)
    models = mounts[config["DIGITREC_MODELS_DIR"]]
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = resources[("PersistentVolumeClaim", claim["claimName"])]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in ("/tmp", home.group(1)):
        assert "emptyDir" in volumes[mounts[path]["name"]]

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = resources[("Service", "digitrec")]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = resources[("PodDisruptionBudget", "digitrec")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = resources[("HorizontalPodAutoscaler", "digitrec")]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "digitrec",
    }
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
