# Serve-only image: the web app and API on ONNX Runtime, without PyTorch.
# Build: docker build -t digitrec .   Run: docker run -p 8000:8000 digitrec
# For throughput, one worker per core: docker run -e DIGITREC_WORKERS=2 ...
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
RUN pip install --no-cache-dir -c requirements.lock ".[serve]"

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"]
CMD ["digitrec", "serve", "--host", "0.0.0.0", "--port", "8000"]
