"""The ingest route's shortcuts give what the general code gives: the answer's server_time,
the upload's headers (the first of each name, as Starlette reads them)."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request

from agent.contract.record import format_time
from collector import app


def test_now_text_is_format_time_of_now() -> None:
    for _ in range(1000):
        before = format_time(datetime.now(UTC))
        text = app._now_text()
        after = format_time(datetime.now(UTC))
        assert len(text) == len(before) and before <= text <= after, text
        assert datetime.fromisoformat(text).tzinfo is not None


def test_upload_headers_are_starlette_s() -> None:
    raw = [
        (b"authorization", b"Bearer first"),
        (b"authorization", b"Bearer second"),
        (b"content-encoding", b"GZIP"),
        (b"content-length", b"12"),
        (b"x-odd", "ä".encode("latin-1")),
    ]
    scope = {"type": "http", "headers": raw}

    async def receive() -> dict[str, object]:
        return {}

    upload = app.Upload(scope, receive)
    request = Request(scope)
    for name in ("authorization", "content-encoding", "content-length", "x-odd", "missing"):
        assert upload.header(name.encode()) == request.headers.get(name, "")
