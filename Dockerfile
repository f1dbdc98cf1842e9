# One image for the operator and every runtime (train, predict, drift, learn, trial, the Bento service).
#   make image                      # or: docker build -t mlworkflow-operator:0.1.0 .
# Python 3.11 as tested; the base is an argument so a platform team can point it at its own mirror.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN python -m venv /opt/mlworkflow
ENV PATH=/opt/mlworkflow/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Dependencies first, at the exact tested versions: this layer is rebuilt only when they change.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p operator/mlworkflow && touch operator/mlworkflow/__init__.py \
    && pip install -c constraints.txt . \
    && pip uninstall -y mlworkflow-operator
COPY operator/ operator/
RUN pip install --no-deps -c constraints.txt . \
    && python -m compileall -q /opt/mlworkflow

FROM ${PYTHON_IMAGE}
# Numeric, non-root: what the chart's and the runtime Pods' securityContext (runAsUser 10001) expect.
RUN groupadd --gid 10001 mlworkflow && useradd --uid 10001 --gid 10001 --no-create-home mlworkflow
COPY --from=build /opt/mlworkflow /opt/mlworkflow
# A read-only root filesystem: everything written goes to /tmp (an emptyDir in the chart) or the artifact
# store (BENTOML_HOME is set per workflow by the operator); nothing writes bytecode next to the code.
ENV PATH=/opt/mlworkflow/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
CMD ["mlworkflow", "--help"]
