"""`sinyal-collector serve`: the ingest API on uvicorn, with the sweeper in the same process."""

from __future__ import annotations

import gc
import logging
import ssl

import uvicorn

from collector.app import create_app
from collector.config import CollectorConfig
from collector.guard import ConnectionGuard, effective_connection_cap, raise_file_limit

log = logging.getLogger("sinyal.collector")


def serve(cfg: CollectorConfig) -> None:
    """Run until SIGINT/SIGTERM. One process; run more replicas behind a load balancer to
    scale, with the sweeper enabled on exactly one of them (status.sweeper)."""
    server = build_server(cfg)
    tune_gc()
    scheme = "https" if cfg.listen.tls else "http"
    log.info(
        "sinyal-collector listening on %s://%s:%d, sink %s %s",
        scheme,
        cfg.listen.host,
        cfg.listen.port,
        cfg.sink.kind,
        cfg.sink.url,
    )
    server.run()


def build_server(cfg: CollectorConfig) -> uvicorn.Server:
    """The collector's uvicorn server: the app, the connection guard (collector.guard) with
    its cap below the open-file limit, and TLS when `listen.tls` is set."""
    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.data_dir.chmod(0o700)  # the registry's token hashes and station list: owner only
    app = create_app(cfg)
    limits = cfg.listen.connections
    file_limit = raise_file_limit()
    cap = effective_connection_cap(limits.max_connections, file_limit)
    if cap < limits.max_connections:
        log.warning(
            "listen.max_connections %d lowered to %d: the open-file limit is %d"
            " (raise LimitNOFILE / ulimit -n)",
            limits.max_connections,
            cap,
            file_limit,
        )
    metrics = app.state.collector.metrics
    guard = ConnectionGuard(
        limits, cap, lambda reason: metrics.connections_closed.labels(reason).inc()
    )
    app.state.guard = guard
    tls = cfg.listen.tls
    config = uvicorn.Config(
        app,
        host=cfg.listen.host,
        port=cfg.listen.port,
        http=guard.protocol(),
        log_level="warning",
        access_log=False,
        proxy_headers=True,
        timeout_keep_alive=max(1, round(limits.idle_timeout_s)),
        backlog=min(4096, cap),
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
    )
    return uvicorn.Server(config)


# Allocations between young-generation collections (CPython's default is 700).
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Fewer cyclic-GC passes on the ingest path. A 100-record upload allocates some
    thousands of objects that reference counting frees on its own; at CPython's default
    threshold each upload set off several young collections, which cost the collector
    about 3-4 µs of CPU per point with 2,000 stations (benchmarks/results/ingest.md).
    A young collection scans what is alive at that moment (the requests in flight: about
    3 ms each here, whatever the threshold), so fewer of them cost less: in the ingest
    benchmark, 10,000 allocations between them took 0.40 s of GC in 7 s of CPU, 100,000
    took 0.15 s. What was loaded at start (registry, thresholds, code) is frozen out of
    every scan."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
