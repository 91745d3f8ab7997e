# syntax=docker/dockerfile:1
#
# The resonate-patterns image: one image for the workers, the operator, the
# local stack and one-off `call`s. Entrypoint `resonate-patterns`; the
# command is the subcommand (`worker`, `operator`, `call PATTERN ARGS`, ...).
#
#   docker build -t resonate-patterns:dev .
#   docker run --rm resonate-patterns:dev call factorial 20 --json
#
# Two stages: wheels for the project and every dependency are built in a
# builder that has compilers; the final stage installs them with no compiler,
# no pip cache, no build context beyond the wheels, and runs as a numeric
# non-root user (the Helm chart sets the same user).

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Compilers only for dependencies without a wheel for this platform.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Metadata first: the dependency wheels stay cached while only code changes.
COPY pyproject.toml README.md ./
COPY service ./service
RUN pip wheel --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG UID=10001
ARG GID=10001
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
RUN groupadd --system --gid "${GID}" resonate \
 && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin resonate
# Install from the builder's wheels without copying them into a layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels resonate-patterns
WORKDIR /tmp
USER ${UID}:${GID}
# /healthz, /readyz and /metrics of workers and the operator (RESONATE_PATTERNS_HTTP_PORT).
EXPOSE 9400
ENTRYPOINT ["resonate-patterns"]
CMD ["worker"]
