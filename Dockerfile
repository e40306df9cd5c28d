# syntax=docker/dockerfile:1
# The AgentBudget image: the budget authority (`agentbudget serve`, the default), the migrations
# (`agentbudget migrate`) and the operator (`agentbudget-operator`). The chart runs all three.
#
#   docker build -t registry.example.com/agentbudget:0.1.0 .

ARG PYTHON_VERSION=3.11

# --- build: the project's wheel and the wheels of all its dependencies -------------------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from (pyproject.toml's hatch packages and readme).
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY server/ server/
COPY operator/ operator/
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the installed wheels, no build tools, no source tree -----------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the build stage, so they never become a layer of this image;
# bytecode is compiled here because the chart's read-only root filesystem forbids it at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels --compile agentbudget \
    && groupadd --system --gid 10001 agentbudget \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin agentbudget
# HOME is the writable /tmp (an emptyDir in the chart); the authority serves on every interface
# of the container (its default is loopback).
ENV PYTHONDONTWRITEBYTECODE=1 HOME=/tmp AGENTBUDGET_LISTEN=0.0.0.0:50051
# Numeric, so that Kubernetes' runAsNonRoot can verify it without looking the name up.
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 9464
ENTRYPOINT ["agentbudget"]
CMD ["serve"]
