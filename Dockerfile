FROM python:3.11-slim
WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY saga ./saga
COPY saga_http ./saga_http
COPY saga_grpc ./saga_grpc
COPY workers ./workers
COPY saga_cli ./saga_cli
COPY workflows ./workflows
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system --uid 10001 saga && mkdir -p /app/data && chown saga /app/data
USER saga
EXPOSE 8080 50051
ENV CONFIG_PATH=/app/config/config.yaml
CMD ["saga", "serve", "--host", "0.0.0.0"]
