# The Sinyal collector for deploy/compose/docker-compose.yml (build context: the repository).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY collector ./collector
# Pango and fonts for the PDF reports (WeasyPrint), as Debian ships them.
RUN apt-get update && apt-get install -y --no-install-recommends \
        libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir '.[collector]' \
    && useradd --system --uid 10001 --home /var/lib/sinyal-collector sinyal \
    && mkdir -p /var/lib/sinyal-collector \
    && chown sinyal /var/lib/sinyal-collector
USER sinyal
EXPOSE 8080
ENTRYPOINT ["sinyal-collector"]
CMD ["serve"]
