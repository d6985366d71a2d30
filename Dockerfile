# Serve-only image: the web app and API on ONNX Runtime, without PyTorch, with the
# PostgreSQL driver and the Redis client for running several replicas (compose.yaml,
# deploy/k8s/; README, "Running on several machines").
# Build: docker build -t digitrec .   Run: docker run -p 8000:8000 --stop-timeout 30 digitrec
# For throughput, one worker per core: docker run -e DIGITREC_WORKERS=2 ...
# Writes only to /tmp and DIGITREC_HOME (/data), so it runs with a read-only root file
# system (docker run --read-only --tmpfs /tmp --tmpfs /data ...).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_WAIT_POLICY=PASSIVE \
    DIGITREC_HOME=/data

RUN useradd --create-home --uid 10001 digitrec \
    && mkdir /data && chown digitrec /data

WORKDIR /app
COPY pyproject.toml README.md requirements.lock ./
COPY src ./src
RUN pip install --no-cache-dir -c requirements.lock ".[serve,postgres,redis]"

USER 10001
EXPOSE 8000
# Liveness, not readiness: /healthz answers while the process works, /readyz also says
# 503 while the database is unreachable or the server drains. Docker acts on "unhealthy"
# (Swarm replaces the container, compose's depends_on waits): on /readyz a database outage
# would have every replica killed and restarted at once, which cures nothing. Routing is
# the load balancer's job and follows /readyz (deploy/haproxy.cfg, Kubernetes' readiness
# probe).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
# SIGTERM: /readyz turns 503 for DIGITREC_SHUTDOWN_DELAY_S (5 s) while requests are still
# answered, then in-flight requests get up to 15 s (server.py GRACEFUL_SHUTDOWN_S). Give
# the container 30 s before SIGKILL: docker's default is 10 s, so run with
# --stop-timeout 30 (compose: stop_grace_period 30s; Kubernetes:
# terminationGracePeriodSeconds 30).
STOPSIGNAL SIGTERM
CMD ["digitrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
