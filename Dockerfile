# model-proxy: the image mirrors the original's deployment (port 8002, configs and the
# TLS pair mounted into /app, logs in /app/log, tokens and cache in /app/data).
# The compiled wire-format encoder (models/_compact.c) is built in a stage of its own,
# so the image carries the wheel but not the compiler.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml setup.py README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed uid so that host files mounted into /app can be made readable for it.
RUN useradd --system --uid 10001 --user-group --home-dir /app --shell /usr/sbin/nologin model-proxy

COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels

WORKDIR /app
RUN mkdir -p /app/log /app/data && chown model-proxy:model-proxy /app/log /app/data
COPY docker/entrypoint.sh /usr/local/bin/model-proxy-entrypoint

EXPOSE 8002
VOLUME ["/app/log", "/app/data"]

# The certificate is usually self-signed, so the check does not verify it.
COPY docker/healthcheck.py /usr/local/lib/model-proxy-healthcheck.py
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "/usr/local/lib/model-proxy-healthcheck.py"]

# Starts as root only to hand /app/log and /app/data to uid 10001, then drops privileges
# (see docker/entrypoint.sh). Extra `docker run` arguments go to `model-proxy serve`.
ENTRYPOINT ["model-proxy-entrypoint"]
