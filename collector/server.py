"""`sinyal-collector serve`: the ingest API on uvicorn, with the sweeper in the same process."""

from __future__ import annotations

import gc
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
    tune_gc()
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


# Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Fewer cyclic-GC passes on the ingest path. A 100-record upload allocates some
    thousands of objects that reference counting frees on its own; at CPython's default
    threshold each upload sets off several young collections. A young collection scans what
    is alive at that moment (the requests in flight, whatever the threshold), so fewer of
    them cost less (figures: benchmarks/results/ingest-tuning.md). What was loaded at start
    (registry, thresholds, code) is frozen out of every scan."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
