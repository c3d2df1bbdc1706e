# syntax=docker/dockerfile:1
# Build stage: a wheel and its dependencies in a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fhir_gateway ./fhir_gateway
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --upgrade pip \
    && /opt/venv/bin/pip install .

# Runtime stage: slim, non-root, only the virtualenv.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DATA_DIR=/data
RUN useradd --system --uid 10001 --home-dir /data --create-home gateway
COPY --from=build /opt/venv /opt/venv
USER gateway
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status == 200 else 1)"]
CMD ["fhir-gateway", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
