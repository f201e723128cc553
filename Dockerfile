# syntax=docker/dockerfile:1
# payloadtags: the aggregated API server image.
#   docker build -t payloadtags:0.1.0 .
#
# Base image: pinned by tag (Python 3.11 on Debian 12). Pin it by digest as well
# when you publish, e.g. python:3.11-slim-bookworm@sha256:<digest> from
# `docker buildx imagetools inspect python:3.11-slim-bookworm`, in both FROM lines.
# (The digest is not written here because the project's CI cannot reach an image
# registry to check it.)

# --- build: wheel of the project, installed with its pinned dependencies into a venv
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /src
COPY pyproject.toml README.md requirements-runtime.lock ./
COPY src/ src/
# The wheel's metadata carries the exact pins of pyproject.toml's dependencies.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv build --wheel --out-dir /dist . \
 && uv venv --python python3.11 /opt/payloadtags \
 && uv pip install --python /opt/payloadtags/bin/python --require-hashes -r requirements-runtime.lock \
 && uv pip install --python /opt/payloadtags/bin/python --no-deps /dist/payloadtags-*.whl \
 && /opt/payloadtags/bin/payloadtags --version

# --- runtime: the venv and the interpreter, no uv, pip, setuptools or compilers
FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="payloadtags" \
      org.opencontainers.image.description="Kubernetes aggregated API server exposing OCI registry tags as PayloadRepositoryTag objects" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
 && groupadd --system --gid 65532 payloadtags \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin payloadtags
COPY --from=build /opt/payloadtags /opt/payloadtags
ENV PATH=/opt/payloadtags/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["payloadtags", "serve"]
