"""Several replicas on shared state, on loopback, started by our own files: a throw-away
PostgreSQL, a Redis, N `digitrec serve` replicas and HAProxy in front of them with the
project's own ``deploy/haproxy.cfg``, the file compose uses.

The topology test (tests/test_topology.py) and the replica benchmark
(benchmarks/bench_replicas.py) both run this. HAProxy's config names three replicas by
environment variables; with fewer replicas the rest point at a closed port, so HAProxy's
health checks keep them out and every request goes to the ones that run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.conftest import (
    MNIST_CACHE,
    PG_BIN,
    LiveServer,
    PostgresServer,
    RedisServer,
    free_port,
    run_cli,
)

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
PROXY_SLOTS = 3  # replicas deploy/haproxy.cfg names
DOWN = re.compile(r"Server replicas/(\w+) is DOWN")  # HAProxy's log line


def topology_missing() -> str | None:
    """Why the topology cannot start here, or None."""
    for program in ("haproxy", "redis-server"):
        if shutil.which(program) is None:
            return f"{program} is not installed (Debian: apt-get install {program})"
    if not (PG_BIN / "postgres").is_file():
        return f"no PostgreSQL server in {PG_BIN} (Debian: apt-get install postgresql-15)"
    return None


class Proxy:
    """HAProxy with deploy/haproxy.cfg in front of ``replicas`` (host:port each)."""

    def __init__(self, replicas: list[str], base: Path) -> None:
        if len(replicas) > PROXY_SLOTS:
            raise ValueError(f"deploy/haproxy.cfg names {PROXY_SLOTS} replicas")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        closed = f"127.0.0.1:{free_port()}"  # nothing listens there: health checks fail
        self.unused = PROXY_SLOTS - len(replicas)
        slots = [*replicas, *[closed] * self.unused]
        self.env = {
            **os.environ,
            "DIGITREC_PROXY_BIND": f"127.0.0.1:{self.port}",
            **{f"DIGITREC_REPLICA_{i + 1}": address for i, address in enumerate(slots)},
        }
        base.mkdir(parents=True, exist_ok=True)
        self.log = base / "haproxy.log"
        self._log_file = self.log.open("wb")
        self.process = subprocess.Popen(
            ["haproxy", "-db", "-f", str(HAPROXY_CFG)],
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        """Until a request through the proxy reaches a ready replica and HAProxy has taken
        the unused slots out (it counts a server up until its checks fail)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log.read_text()[-2000:]}")
            down = len(set(DOWN.findall(self.log.read_text(errors="replace"))))
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                    if response.status == 200 and down >= self.unused:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"no replica ready behind haproxy: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


class Topology:
    """PostgreSQL + Redis + ``replicas`` servers + HAProxy; ``env`` adds DIGITREC_* settings
    for every replica (and for the command line through ``cli``)."""

    def __init__(self, base: Path, replicas: int = 3, env: dict[str, str] | None = None) -> None:
        self.base = base
        self.count = replicas
        self.postgres = PostgresServer(PG_BIN)
        self.redis = RedisServer(Path(tempfile.mkdtemp(prefix="digitrec-redis-")))
        self.replicas: list[LiveServer] = []
        self.proxy: Proxy | None = None
        self.extra = env or {}
        self.env: dict[str, str] = {}

    def start(self) -> Topology:
        try:
            self.postgres.start()
            self.redis.start()
            models = self.base / "models"  # the shared registry folder (a mounted volume)
            models.mkdir(parents=True, exist_ok=True)
            self.env = {
                "DIGITREC_DATABASE_URL": self.postgres.url(),
                "DIGITREC_REDIS_URL": self.redis.url,
                "DIGITREC_MODELS_DIR": str(models),
                "DIGITREC_DATA_DIR": str(MNIST_CACHE),
                # Every replica must accept the page tokens the others issued.
                "DIGITREC_SECRET_KEY": secrets.token_urlsafe(32),
                "DIGITREC_TRUST_PROXY_HEADERS": "true",
                **self.extra,
            }
            for i in range(self.count):
                self.replicas.append(LiveServer(self.base / f"replica{i + 1}", env=self.env))
            for replica in self.replicas:
                replica.wait_ready()
            addresses = [f"127.0.0.1:{r.port}" for r in self.replicas]
            self.proxy = Proxy(addresses, self.base)
            self.proxy.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None, "start() first"
        return self.proxy.url

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`digitrec ARGS` against the shared database and registry, as an operator runs it."""
        return run_cli(*args, home=self.base / "operator", env=self.env)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for replica in self.replicas:
            replica.stop()
        self.redis.stop()
        self.postgres.stop()
