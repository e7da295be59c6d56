"""`sinyal-collector serve`: the ingest API on uvicorn, with the sweeper in the same process."""

from __future__ import annotations

import logging

import uvicorn

from collector.app import create_app
from collector.config import CollectorConfig

log = logging.getLogger("sinyal.collector")


def serve(cfg: CollectorConfig) -> None:
    """Run until SIGINT/SIGTERM. One process; run more replicas behind a load balancer to
    scale, with the sweeper enabled on exactly one of them (status.sweeper)."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(cfg)
    log.info(
        "sinyal-collector listening on http://%s:%d, sink %s %s",
        cfg.listen.host,
        cfg.listen.port,
        cfg.sink.kind,
        cfg.sink.url,
    )
    uvicorn.run(
        app,
        host=cfg.listen.host,
        port=cfg.listen.port,
        log_level="warning",
        access_log=False,
        proxy_headers=True,
    )
