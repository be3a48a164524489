# syntax=docker/dockerfile:1
# mcp-bridge container image; README "Container and deployment" explains the
# choices and tests/test_deploy.py checks this file against the code.
#
#   docker build -t mcp-bridge .                          # the gateway (default: the last stage)
#   docker build --target node -t mcp-bridge:node .       # plus Node.js 22 and npm, for npx stdio servers
#   docker build --build-arg EXTRAS=example -t mcp-bridge-example .   # plus the example server (mcp SDK)
#   docker build --build-arg EXTRAS=otel -t mcp-bridge:otel .            # plus OpenTelemetry tracing
#
# Needs BuildKit (Docker 23+ builds with it by default) for the pip cache mount.
# Dependencies come from requirements/EXTRAS.txt (gateway.txt without EXTRAS),
# locked with hashes by `uv pip compile` (each file's first lines give the
# command); tests/test_deploy.py checks them against pyproject.toml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# --- build: a virtualenv holding the gateway and its dependencies -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# Extras of the project to install as well: one of "example" (the mcp SDK)
# or "otel" (OpenTelemetry), each with its own lock file.
ARG EXTRAS=""
# The locked dependencies first, in their own layer: a change to bridge/ does
# not reinstall them.
COPY requirements ./requirements
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --require-hashes --only-binary=:all: \
      -r "requirements/${EXTRAS:-gateway}.txt"
# setuptools reads README.md as the package's long description.
COPY pyproject.toml README.md LICENSE ./
COPY bridge ./bridge
# The package alone (its dependencies are in already); pip check fails the
# build if the lock no longer satisfies pyproject.toml.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-deps ".${EXTRAS:+[$EXTRAS]}" \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

# --- base: what every runtime image has -----------------------------------------
FROM ${PYTHON_IMAGE} AS base
# tini as PID 1 forwards SIGTERM to the gateway and reaps orphans: a stdio
# server started through npx or a shell leaves grandchildren behind when it dies.
# Versions pinned (hadolint DL3008) to bookworm's: the base image is bookworm,
# so they stay installable until Debian replaces them in a point release; then
# the build fails here and the pin is bumped (apt-cache policy PACKAGE).
RUN apt-get update \
 && apt-get install --yes --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/*
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 mcp \
 && useradd --system --uid 10001 --gid mcp --home-dir /home/mcp --create-home \
      --shell /usr/sbin/nologin mcp \
 && install --directory --owner=10001 --group=10001 /data \
 && install --directory /config
COPY --from=build /opt/venv /opt/venv
# BRIDGE_HOST: inside a container the published port arrives on the container's
# own interface, not on loopback; set BRIDGE_ALLOWED_HOSTS (README) since the
# gateway then checks no Host header by itself.
# BRIDGE_CONFIG: the mcpServers file, mounted at /config; set it empty
# (-e BRIDGE_CONFIG=) to use --sse or --stdio instead.
# BRIDGE_STORE_URL: sessions in SQLite on the /data volume; redis://... for replicas.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/mcp \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    BRIDGE_CONFIG=/config/servers.json \
    BRIDGE_STORE_URL=sqlite:////data/sessions.db
WORKDIR /home/mcp
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
# python and urllib, so that the image needs no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BRIDGE_PORT', '8080') + '/healthz', timeout=4)"]
ENTRYPOINT ["tini", "--", "mcp-bridge"]
CMD []

# --- node: base plus Node.js and npm, for stdio servers launched with npx -------
FROM ${NODE_IMAGE} AS node-dist

FROM base AS node
USER 0
# The official Node.js build (22 LTS) rather than Debian's nodejs 18 (end of
# life) and its hundreds of node-* packages. libatomic1: newer Node.js builds
# link against it and python's slim image lacks it.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends libatomic1=12.2.0-14+deb12u1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node-dist /usr/local/bin/node /usr/local/bin/node
COPY --from=node-dist /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && npm --version
USER 10001:10001

# --- slim: the default target (the last stage), the gateway without Node.js -----
FROM base AS slim
