# routeplane for docker-compose.yml: the control plane, the CLI and the sample replicas.
# The image installs the wheel, as README's "Install" does, never the source tree: everything
# the CLI reads at run time ships inside the package. tests/integration/deploy/test_containers.py
# runs this file's pip commands outside a container and each compose service's command on
# the result.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY control_plane ./control_plane
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
COPY --from=wheel /dist /dist
# xds-protos ships its own google/longrunning/operations_pb2.py without the gRPC stubs and
# overwrites googleapis-common-protos' copy, which google-cloud-spanner's admin calls need.
RUN pip install --no-cache-dir /dist/routeplane-*.whl \
 && pip install --no-cache-dir --force-reinstall --no-deps googleapis-common-protos==1.76.0 \
 && rm -rf /dist
RUN useradd --system --uid 10001 --no-create-home routeplane
USER 10001
