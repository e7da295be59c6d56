"""Runs one speedtest-cli test in a child process: ``python -m agent.speedtest_worker``.

speedtest-cli measures with blocking urllib calls in threads that cannot be cancelled,
and it can hang; in a process of its own a test has a hard deadline (the agent kills
the process) and its memory is returned when it ends. The agent never imports
speedtest itself.

Protocol, one JSON object per line. stdin: the job, then ``go`` once the agent has
measured the idle latency. stdout (events):
  {"event": "server", "id": ..., "host": "h:port", "url": ..., "name": ...}
  {"event": "phase", "phase": "download" | "upload"}          a phase starts
  {"event": "download" | "upload", "bits_per_s": ..., "bytes": ..., "seconds": ...,
   "method": "tcp_info" | "speedtest-cli", "speedtest_cli_bits_per_s": ...,
   "window_s": [start, end]}                           seconds from the phase's start
  {"event": "error", "code": <ErrorCode value>, "message": ...}
Units are speedtest-cli's own (bit/s, bytes); the agent converts them once.

The rate (`bits_per_s`) is the loaded-window rate of agent.tcpmeter: the bytes TCP delivered
on speedtest-cli's connections (acknowledged by the server for the upload, received for the
download) from `omit_s(length)` after the phase starts to the end of the test length (or the
phase's end, if sooner), divided by that window. speedtest-cli's own figure (its bytes over its
phase time) is kept as `speedtest_cli_bits_per_s`, and is the rate where the kernel has no
TCP_INFO byte counters (`method`). `bytes` is speedtest-cli's count for the whole phase.

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
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from agent import tcpmeter
from agent.contract.record import ErrorCode
from agent.netutil import error_code_for

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


# The start-up ramp left out of the rate, as iperf3's --omit: new connections in slow start
# and the first requests being set up. A quarter of the test length, at most 2 s.
OMIT_FRACTION = 0.25
OMIT_MAX_S = 2.0
# How long after the test length the connections still open are shut down.
GRACE_S = 1.0


def omit_s(length_s: float) -> float:
    return min(OMIT_MAX_S, OMIT_FRACTION * length_s)


def one_way(samples: list[tcpmeter.Sample], upload: bool) -> list[tuple[float, int]]:
    """(time, bytes) of the phase's direction: acknowledged (upload) or received."""
    return [(t, acked if upload else received) for t, acked, received in samples]


def loaded_rate(
    samples: list[tcpmeter.Sample], t0: float, t_stop: float, length_s: float, upload: bool
) -> tuple[float, float, float] | None:
    """(bit/s, window start, window end; seconds from t0) of one phase, or None when the
    counters are missing or the phase ended before the ramp did."""
    start, end = t0 + omit_s(length_s), min(t0 + length_s, t_stop)
    if end - start < 0.5 * (length_s - omit_s(length_s)):
        return None
    series = one_way(samples, upload)
    if series[-1][1] == series[0][1]:
        return None
    return tcpmeter.window_rate(series, start, end), start - t0, end - t0


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


class Slots:
    """speedtest-cli's connections per phase, refilled as soon as any request ends.

    speedtest-cli starts a thread per request, at most `threads` at once, but counts a thread
    as ended only when it has joined it, in the order they started: behind one slow request
    (a connection in retransmission back-off) the requests that ended are not replaced, and
    the link was traced running on 5 of 8 connections for seconds at a time. Here it is given
    twice as many threads, and each waits for one of `threads` slots before its request: at
    most `threads` connections are open at once, as configured, and a slot that frees up is
    taken by the next request at once.
    """

    def __init__(self) -> None:
        self._slots: threading.BoundedSemaphore | None = None

    def threads(self, n: int) -> int:
        """speedtest-cli's thread count for a phase of `n` connections."""
        self._slots = threading.BoundedSemaphore(n)
        return 2 * n

    def install(self) -> None:
        import speedtest

        for cls in (speedtest.HTTPDownloader, speedtest.HTTPUploader):
            cls.run = self._wrap(cls.run)

    def _wrap(self, real: Any) -> Any:
        def run(thread: Any) -> None:
            slots = self._slots
            if slots is None:
                real(thread)
                return
            with slots:
                real(thread)

        return run


SLOTS = Slots()


def end_stragglers(meter: tcpmeter.Meter, since: float, phase: str) -> bool:
    """Shut down the phase's connections still open past the test length, if the link was
    still moving data in its last `GRACE_S` (or since the ramp, in a shorter test).

    Past the test length speedtest-cli only waits for its threads: one stuck on a connection
    in retransmission back-off kept a 10 s upload phase going for 18.6 s, and could push the
    test past its deadline. A server that stalled moved nothing at the end, and its test is
    left to end at the probe's deadline as an error, not as a low but "successful" rate.
    """
    before = one_way(meter.samples, phase == "upload")
    ((_, now),) = one_way([meter.sample()], phase == "upload")
    if before and now > tcpmeter.at(before, since):
        meter.shutdown()
        return True
    return False


def measure_phase(st: Any, phase: str, meter: tcpmeter.Meter | None) -> dict[str, Any]:
    """One phase of speedtest-cli, measured; the data of its event (see the module doc)."""
    length = float(st.config["length"][phase])
    threads = SLOTS.threads(int(st.config["threads"][phase]))
    if meter is not None:
        meter.start()
    t0 = time.monotonic()
    ender = None
    if meter is not None:
        since = t0 + max(omit_s(length), length - GRACE_S)
        ender = threading.Timer(length + GRACE_S, end_stragglers, (meter, since, phase))
        ender.daemon = True
        ender.start()
    if phase == "download":
        bits = st.download(threads=threads)
        count = st.results.bytes_received
    else:
        # Allocated per request as it starts: a Raspberry Pi need not hold ~150 MB.
        bits = st.upload(pre_allocate=False, threads=threads)
        count = st.results.bytes_sent
    t_stop = time.monotonic()
    if ender is not None:
        ender.cancel()
    result: dict[str, Any] = {"method": "speedtest-cli", "bits_per_s": bits}
    if meter is not None:
        loaded = loaded_rate(meter.stop(), t0, t_stop, length, phase == "upload")
        if loaded is not None:
            result = {"method": "tcp_info", "bits_per_s": loaded[0], "window_s": loaded[1:]}
    return {**result, "speedtest_cli_bits_per_s": bits, "bytes": count, "seconds": t_stop - t0}


def run(job: dict[str, Any], meter: tcpmeter.Meter, metered: bool) -> None:
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
        result = measure_phase(st, phase, meter if metered else None)
        emit(phase, **result)
        count = result["bytes"]
        if count == 0:
            emit(
                "error",
                code=ErrorCode.PROTOCOL_ERROR.value,
                message=f"no {phase} data: the server answered nothing usable",
            )
            return


def main() -> None:
    meter = tcpmeter.Meter()
    metered = tcpmeter.supported()
    if metered:
        tcpmeter.install(meter)
    limit_unsent_data()
    SLOTS.install()
    job = json.loads(sys.stdin.readline())
    try:
        run(job, meter, metered)
    except Exception as exc:
        emit("error", code=_code(exc).value, message=f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
