"""`sinyal-collector serve`: the ingest API on uvicorn, with the sweeper in the same process."""

from __future__ import annotations

import errno
import gc
import logging
import socket

import uvicorn

from collector.app import create_app
from collector.config import CollectorConfig

log = logging.getLogger("sinyal.collector")


class ListenError(Exception):
    """The listen address cannot be bound (in use, not on this machine, or privileged)."""


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the app starts, so a port in use is one clear
    error instead of uvicorn's log line and exit 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = f"another process listens there (`ss -ltnp 'sport = :{port}'` shows which)"
        elif exc.errno == errno.EACCES:
            why = "ports below 1024 need root or CAP_NET_BIND_SERVICE"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine"
        else:
            why = exc.strerror or str(exc)
        raise ListenError(
            f"cannot listen on {host}:{port}: {why}; stop it, or set listen.port "
            "(or $SINYAL_LISTEN__PORT) to a free port"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve(cfg: CollectorConfig) -> None:
    """Run until SIGINT/SIGTERM. One process; run more replicas behind a load balancer to
    scale, with the sweeper enabled on exactly one of them (status.sweeper).
    Raises ListenError when listen.host:listen.port cannot be bound."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    sock = bind(cfg.listen.host, cfg.listen.port)
    app = create_app(cfg)
    tune_gc()
    log.info(
        "sinyal-collector listening on http://%s:%d, sink %s %s",
        cfg.listen.host,
        cfg.listen.port,
        cfg.sink.kind,
        cfg.sink.url,
    )
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, proxy_headers=True, fd=sock.fileno()
    )
    uvicorn.Server(config).run(sockets=[sock])


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
