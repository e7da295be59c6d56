# The Sinyal collector for deploy/compose/docker-compose.yml (build context: the repository).
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY collector ./collector
RUN pip install --no-cache-dir '.[collector]' \
    && useradd --system --uid 10001 --home /var/lib/sinyal-collector sinyal \
    && mkdir -p /var/lib/sinyal-collector \
    && chown sinyal /var/lib/sinyal-collector
USER sinyal
EXPOSE 8080
ENTRYPOINT ["sinyal-collector"]
CMD ["serve"]
