"""collector.connguard._CorkedWrites: a POST answer's head and body leave in one write, in
order, and nothing kept is lost when the connection closes."""

from __future__ import annotations

import asyncio

from collector.connguard import _CorkedWrites


class _Transport:
    """The three methods uvicorn's response cycle calls, recording the writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _cork(t: _Transport) -> _CorkedWrites:
    """A cork over `t`, on the running loop (call it inside asyncio.run)."""
    return _CorkedWrites(t, asyncio.get_running_loop())  # type: ignore[arg-type]


def test_head_and_body_of_one_turn_go_out_as_one_write() -> None:
    async def run() -> list[bytes]:
        t = _Transport()
        cork = _cork(t)
        cork.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        cork.write(b"{}")
        assert t.writes == []  # kept until the turn ends
        await asyncio.sleep(0)
        return t.writes

    assert asyncio.run(run()) == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


def test_explicit_flush_then_turn_end_writes_nothing_twice() -> None:
    async def run() -> list[bytes]:
        t = _Transport()
        cork = _cork(t)
        cork.write(b"head")
        cork.write(b"body")
        cork.flush()  # the answer is complete
        await asyncio.sleep(0)  # the scheduled flush finds nothing
        cork.write(b"next")
        await asyncio.sleep(0)
        return t.writes

    assert asyncio.run(run()) == [b"headbody", b"next"]


def test_close_writes_what_is_kept_first() -> None:
    async def run() -> _Transport:
        t = _Transport()
        cork = _cork(t)
        cork.write(b"head")
        cork.write(b"body")
        cork.close()
        await asyncio.sleep(0)
        return t

    t = asyncio.run(run())
    assert t.writes == [b"headbody"] and t.closed


def test_large_answers_are_not_held_in_memory() -> None:
    async def run() -> list[int]:
        t = _Transport()
        cork = _cork(t)
        chunk = b"x" * (_CorkedWrites.FLUSH_BYTES // 2)
        for _ in range(5):
            cork.write(chunk)
        sizes = [len(w) for w in t.writes]  # written as soon as FLUSH_BYTES were kept
        await asyncio.sleep(0)
        return sizes + [len(w) for w in t.writes[len(sizes) :]]

    assert asyncio.run(run()) == [
        _CorkedWrites.FLUSH_BYTES,
        _CorkedWrites.FLUSH_BYTES,
        _CorkedWrites.FLUSH_BYTES // 2,
    ]


def test_nothing_is_written_to_a_closing_transport() -> None:
    async def run() -> list[bytes]:
        t = _Transport()
        cork = _cork(t)
        cork.write(b"late")
        t.closed = True  # the peer went away
        await asyncio.sleep(0)
        return t.writes

    assert asyncio.run(run()) == []
