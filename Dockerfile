# The driftline worker image (docker-compose.yml builds it). Runtime deps only; tests run on
# the host (./test).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Metadata first, then code: the dependency layer is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
COPY src ./src
COPY stream ./stream
COPY detectors ./detectors
# The plain package is only the publishing SDK: the worker needs the `worker` extra.
RUN pip install '.[worker]' && useradd --system --uid 10001 driftline

USER driftline
EXPOSE 8000
# /healthz answers as soon as the web server runs; /readyz only when partitions are assigned.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["driftline", "run", "--config", "/etc/driftline/driftline.yml", "--listen", "0.0.0.0:8000"]
