# The meshbridge image: the `meshbridge` command and nothing else (the gateway
# runs the upstream Envoy image). Build from the repository root:
#   docker build -t ghcr.io/meshbridge/meshbridge:0.1.0 .
# The manifests reference exactly that name with imagePullPolicy IfNotPresent,
# so an image built locally and loaded with `kind load docker-image` is used
# as it is.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and the
# manifests' runAsUser matches.
RUN groupadd --system --gid 10001 meshbridge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin meshbridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
# xDS (gRPC) and the admin server (health, metrics, /debug).
EXPOSE 18000 8877
ENTRYPOINT ["meshbridge"]
CMD ["serve", "--source", "kubernetes"]
