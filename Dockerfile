# The meterline image used by docker-compose.yml (worker, sink, migrate).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streams ./streams
COPY schemas ./schemas
COPY deploy ./deploy
RUN pip install --no-cache-dir .
ENV METERLINE_MIGRATIONS_DIR=/app/deploy/clickhouse/migrations
USER nobody
ENTRYPOINT []
CMD ["meterline", "--help"]
