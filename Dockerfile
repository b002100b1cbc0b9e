# modelmill serving image: `modelmill serve` on port 8080 as an unprivileged user.
#   docker build -t modelmill:0.1.0 .
#   docker run -p 8080:8080 -e MODELMILL_DB=postgresql://... -e MODELMILL_ONLINE=redis://... modelmill:0.1.0 \
#     serve --host 0.0.0.0 --port 8080 --model flights@production
# Two stages: the first builds a virtual environment in /opt/modelmill with deploy/docker/install.sh (the step
# tests/serving/test_deploy.py runs in a fresh venv, as no Docker engine runs in CI); the second copies only that
# environment onto a clean base. It installs the `serving`, `redis` and `postgres` extras, not torch, LightGBM,
# ONNX or Ray (torch alone is gigabytes): rebuild with --build-arg EXTRAS=serving,redis,postgres,torch for those
# models. Backends come from the MODELMILL_* variables (deploy/deployment.yaml), see `modelmill doctor`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=serving,redis,postgres
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
COPY deploy/docker/install.sh /usr/local/bin/modelmill-install
RUN --mount=type=cache,target=/root/.cache/pip sh /usr/local/bin/modelmill-install /opt/modelmill /src "${EXTRAS}"

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 10001 modelmill \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/modelmill modelmill
COPY --from=build /opt/modelmill /opt/modelmill
ENV PATH=/opt/modelmill/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MODELMILL_HOME=/home/modelmill/.modelmill
USER 10001:10001
WORKDIR /home/modelmill
EXPOSE 8080
# Ready, not just alive: every served model has a loaded version (the Deployment's readiness probe too).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/ready', timeout=2).status != 200)"]
ENTRYPOINT ["modelmill"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
