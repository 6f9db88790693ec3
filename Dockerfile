# routeplane for docker-compose.yml: the control plane, the CLI and the sample replicas.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY control_plane ./control_plane
COPY envoy ./envoy
COPY mesh ./mesh
RUN pip install --no-cache-dir . \
 && pip install --no-cache-dir --force-reinstall --no-deps googleapis-common-protos==1.76.0
