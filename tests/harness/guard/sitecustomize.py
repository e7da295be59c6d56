"""A tripwire: no test may resolve or contact speedtest.net, or any address outside the lab.

Installed in the test process by the `no_speedtest_net` fixture and, through PYTHONPATH,
in every Python child it starts (Python imports `sitecustomize` at start-up), so the
speedtest worker process is guarded too. A name under speedtest.net is refused before
any resolver sees it; a connect outside loopback and 198.18.0.0/15 is refused. Each
attempt is appended to $SPEEDTEST_GUARD_LOG, which the fixture checks is empty.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

ALLOWED = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("::1/128"),
)


def _log(what: str) -> None:
    path = os.environ.get("SPEEDTEST_GUARD_LOG")
    if path:
        with open(path, "a") as f:
            f.write(what + "\n")


def _forbidden_name(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    return isinstance(host, str) and host.lower().rstrip(".").endswith("speedtest.net")


def _allowed_address(address: Any) -> bool:
    try:
        ip = ipaddress.ip_address(address[0].split("%")[0])
    except (TypeError, ValueError, IndexError, AttributeError):
        return True  # AF_UNIX paths and the like
    return any(ip in net for net in ALLOWED)


def install() -> tuple[Any, Any, Any]:
    """Wrap getaddrinfo and connect; returns the originals so a test can undo it."""
    real_gai, real_connect, real_connect_ex = (
        socket.getaddrinfo,
        socket.socket.connect,
        socket.socket.connect_ex,
    )

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if _forbidden_name(host):
            _log(f"resolve {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: {host} is forbidden")
        return real_gai(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed_address(address):
            _log(f"connect {address}")
            raise PermissionError(f"test guard: connecting to {address} is forbidden")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _allowed_address(address):
            _log(f"connect {address}")
            return 13  # EACCES
        return real_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    return real_gai, real_connect, real_connect_ex


if os.environ.get("SPEEDTEST_GUARD_LOG"):
    install()
