"""Runs one speedtest-cli test in a child process: ``python -m agent.speedtest_worker``.

speedtest-cli measures with blocking urllib calls in threads that cannot be cancelled,
and it can hang; in a process of its own a test has a hard deadline (the agent kills
the process) and its memory is returned when it ends. The agent never imports
speedtest itself.

Protocol, one JSON object per line. stdin: the job, then ``go`` once the agent has
measured the idle latency. stdout (events):
  {"event": "server", "id": ..., "host": "h:port", "url": ..., "name": ...}
  {"event": "phase", "phase": "download" | "upload"}          a phase starts
  {"event": "download" | "upload", "bits_per_s": ..., "bytes": ..., "seconds": ...}
  {"event": "error", "code": <ErrorCode value>, "message": ...}
Units are speedtest-cli's own (bit/s, bytes); the agent converts them once.

Backends:
  ookla  speedtest-cli's own configuration and server list from speedtest.net,
         optionally pinned to one server id, then its best-server choice.
  mini   a self-hosted Speedtest Mini endpoint at `url`: the configuration is built
         here (speedtest.net's defaults, our test length), so nothing is requested
         from speedtest.net; download and upload are speedtest-cli's own code.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from agent.netutil import error_code_for
from agent.record import ErrorCode

# speedtest.net's defaults as get_config derives them (upload ratio 5, maxchunkcount 50,
# threadsperurl 4, threadcount 4), so a mini test loads the link as an Ookla test does.
_UPLOAD_SIZES = [524288, 1048576, 7340032]
_DOWNLOAD_SIZES = [350, 500, 750, 1000, 1500, 2000, 2500, 3000, 3500, 4000]
_UPLOAD_COUNT = 17


def mini_config(duration_s: float) -> dict[str, Any]:
    return {
        "client": {"ip": "", "lat": "0", "lon": "0", "isp": "", "country": ""},
        "ignore_servers": [],
        "sizes": {"upload": list(_UPLOAD_SIZES), "download": list(_DOWNLOAD_SIZES)},
        "counts": {"upload": _UPLOAD_COUNT, "download": 4},
        "threads": {"upload": 2, "download": 8},
        "length": {"upload": duration_s, "download": duration_s},
        "upload_max": _UPLOAD_COUNT * len(_UPLOAD_SIZES),
    }


def mini_server(url: str, name: str) -> dict[str, Any]:
    base = url.rstrip("/")
    return {
        "id": name,
        "name": name,
        "sponsor": "Speedtest Mini",
        "host": urlsplit(url).netloc,
        "url": f"{base}/upload.php",
        "d": 0,
        "latency": 0,
    }


UNSENT_LOWAT = 16 * 1024


def limit_unsent_data() -> None:
    """Cap the not-yet-sent bytes in each socket speedtest-cli opens (TCP_NOTSENT_LOWAT).

    speedtest-cli counts upload bytes when it hands them to the socket. Without a cap,
    several MB can wait in send buffers when the test time ends and are counted as sent:
    on a 5 Mbit/s link that overstated the upload by up to 20 % in a 4 s test. With it,
    what is counted but not delivered is what is in flight, as for any sender-side count.
    This process runs only speedtest-cli, so the module-level hook touches nothing else.
    """
    real = socket.create_connection

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        sock = real(*args, **kwargs)
        with contextlib.suppress(OSError, AttributeError):
            lowat = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # 25: Linux's value
            sock.setsockopt(socket.IPPROTO_TCP, lowat, UNSENT_LOWAT)
        return sock

    socket.create_connection = create_connection


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}) + "\n")
    sys.stdout.flush()


def _make(job: dict[str, Any]) -> Any:
    import speedtest

    source = job.get("source")
    timeout = float(job["socket_timeout_s"])
    if job["backend"] == "mini":
        config = mini_config(float(job["duration_s"]))
        server = mini_server(job["url"], job["name"])

        class MiniSpeedtest(speedtest.Speedtest):  # type: ignore[misc]
            """speedtest.Speedtest with its configuration supplied here, not fetched."""

            def get_config(self) -> dict[str, Any]:
                self.config.update(config)
                self.lat_lon = (0.0, 0.0)
                return config

        st = MiniSpeedtest(source_address=source, timeout=timeout)
        st.servers = [server]
        st._best.update(server)
        st.results.server = server
        return st
    st = speedtest.Speedtest(source_address=source, timeout=timeout, secure=job["secure"])
    pinned = job.get("server_id")
    st.get_servers([pinned] if pinned else None)
    st.get_best_server()
    length = float(job["duration_s"])
    st.config["length"] = {"upload": length, "download": length}
    return st


def _code(exc: BaseException) -> ErrorCode:
    import speedtest

    if isinstance(exc, speedtest.NoMatchedServers | speedtest.SpeedtestBestServerFailure):
        return ErrorCode.NO_SERVER
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
    found = error_code_for(cause) or error_code_for(exc)
    if found is not None:
        return found
    if isinstance(exc, speedtest.ConfigRetrievalError | speedtest.ServersRetrievalError):
        return ErrorCode.NO_SERVER
    return ErrorCode.PROTOCOL_ERROR


def run(job: dict[str, Any]) -> None:
    try:
        st = _make(job)
    except Exception as exc:
        emit("error", code=_code(exc).value, message=f"{type(exc).__name__}: {exc}")
        return
    best = st.best
    emit(
        "server",
        id=str(best.get("id")),
        host=best.get("host") or urlsplit(best["url"]).netloc,
        url=best["url"],
        name=best.get("name", ""),
    )
    if sys.stdin.readline().strip() != "go":
        return
    for phase in ("download", "upload"):
        emit("phase", phase=phase)
        t0 = time.monotonic()
        if phase == "download":
            bits = st.download()
            count = st.results.bytes_received
        else:
            # Allocated per request as it starts: a Raspberry Pi need not hold ~150 MB.
            bits = st.upload(pre_allocate=False)
            count = st.results.bytes_sent
        emit(phase, bits_per_s=bits, bytes=count, seconds=time.monotonic() - t0)
        if count == 0:
            emit(
                "error",
                code=ErrorCode.PROTOCOL_ERROR.value,
                message=f"no {phase} data: the server answered nothing usable",
            )
            return


def main() -> None:
    limit_unsent_data()
    job = json.loads(sys.stdin.readline())
    try:
        run(job)
    except Exception as exc:
        emit("error", code=_code(exc).value, message=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
