"""`sinyal-collector serve`: the ingest API on uvicorn, with the sweeper in the same process."""

from __future__ import annotations

import errno
import gc
import logging
import socket
import ssl
import sys
from collections.abc import Callable

import uvicorn

from collector.app import create_app
from collector.config import CollectorConfig
from collector.connguard import ConnectionGuard, effective_connection_cap, raise_file_limit

log = logging.getLogger("sinyal.collector")


class ListenError(Exception):
    """The listen address cannot be bound (in use, not on this machine, or privileged)."""


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket, bound before the app starts, so a port in use is one clear
    error instead of uvicorn's log line and exit 1."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
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


class _Server(uvicorn.Server):
    """uvicorn's server, telling `on_ready` once it accepts connections."""

    on_ready: Callable[[], None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None:
            self.on_ready()


def serve(
    cfg: CollectorConfig,
    sock: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Run until SIGINT/SIGTERM, as the shard cfg.shard_id; `sock`: the listening socket
    already bound (by collector.workers), else listen.host:listen.port is bound here;
    `on_ready` is called once it serves. Several processes: collector.workers.
    Raises ListenError when the address cannot be bound."""
    server, sock = build_server(cfg, sock)
    server.on_ready = on_ready
    tune_gc()
    sys.setswitchinterval(GIL_SWITCH_S)
    scheme = "https" if cfg.listen.tls else "http"
    log.info(
        "sinyal-collector listening on %s://%s:%d, sink %s %s, shard %s",
        scheme,
        cfg.listen.host,
        cfg.listen.port,
        cfg.sink.kind,
        cfg.sink.url,
        cfg.shard_id,
    )
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it stopped on: a normal stop
        log.info("sinyal-collector stopped")


def build_server(
    cfg: CollectorConfig, sock: socket.socket | None = None
) -> tuple[_Server, socket.socket]:
    """The collector's uvicorn server and its bound socket: the app, the connection guard
    (collector.connguard) with its cap below the open-file limit, and TLS when `listen.tls`
    is set. Raises ListenError when the address cannot be bound."""
    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cfg.data_dir.chmod(0o700)  # the registry's token hashes and station list: owner only
    limits = cfg.listen.connections
    file_limit = raise_file_limit()
    cap = effective_connection_cap(limits.max_connections, file_limit)
    if sock is None:
        sock = bind(cfg.listen.host, cfg.listen.port, backlog=min(4096, cap))
    app = create_app(cfg)
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
        proxy_headers=False,  # applied by the app itself, not to uploads (collector.app)
        timeout_keep_alive=max(1, round(limits.idle_timeout_s)),
        backlog=min(4096, cap),
        ssl_certfile=str(tls.cert) if tls else None,
        ssl_keyfile=str(tls.key) if tls else None,
        ssl_ca_certs=str(tls.client_ca) if tls and tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
    )
    return _Server(config), sock


# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
# A large envelope is decoded and checked in a thread (collector.app); while it runs, the
# event loop thread waits for the GIL after every system call it makes (each read, write and
# poll of a request), up to the whole interval each time: an upload arriving beside another
# token's large one paid that several times over. A shorter interval bounds each wait.
GIL_SWITCH_S = 0.0005

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
