"""GET/POST /reports on the collector: a form, a preview of the tables and charts, downloads.

Plain HTML with inline CSS and charts as data: URIs; no script and nothing fetched from
elsewhere, so it works offline and without JavaScript. Admin only: the token in
`reports.admin_token_file`, sent as `Authorization: Bearer TOKEN` or as the password of HTTP
Basic auth (any user name; browsers ask for it). Without that setting the routes answer 404.

    GET  /reports                      the form
    POST /reports                      make the report; the page previews it and links the files
    GET  /reports/files/{id}/{name}    a file of a report made here

`add_report_routes(app, cfg, registry)` is the one place the routes are registered.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import secrets
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from agent.contract.thresholds import load as load_thresholds
from collector.config import CollectorConfig
from collector.registry import Registry
from collector.report.api import (
    QueryError,
    ReportError,
    ReportRequest,
    SinkUnavailable,
    known_operators,
    make_report,
)
from collector.report.i18n import Lang
from collector.report.render import render_page, write_all

MAX_FORM_BYTES = 16 * 1024
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_NAME_RE = re.compile(r"^[a-z0-9_]+\.(csv|txt|xlsx|pdf|html|json)$|^SHA256SUMS$")
_TYPES = {
    ".csv": "text/csv; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".pdf": "application/pdf",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _read_token(path: Path) -> str:
    token = path.read_text().strip()
    if len(token) < 32:
        raise ValueError(f"{path}: the admin token is shorter than 32 characters")
    return token


def _presented(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return value.strip() or None
    if scheme.lower() == "basic":
        try:
            _user, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        return password or None
    return None


def add_report_routes(app: FastAPI, cfg: CollectorConfig, registry: Registry) -> None:
    """Register /reports on `app` (nothing when no admin token file is configured)."""
    if cfg.reports.admin_token_file is None:
        return
    token = _read_token(cfg.reports.admin_token_file)
    root = cfg.data_dir / "reports"
    lock = asyncio.Lock()  # one report at a time: each reads the whole period

    def denied(request: Request) -> Response | None:
        given = _presented(request)
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return None
        return PlainTextResponse(
            "admin token required (Basic auth password or Bearer)",
            401,
            headers={"WWW-Authenticate": 'Basic realm="sinyal reports", charset="UTF-8"'},
        )

    def page(
        lang: Lang, values: ReportRequest, error: str = "", status: int = 200, **kw: Any
    ) -> HTMLResponse:
        try:
            ops = known_operators(cfg.sink)
        except (SinkUnavailable, QueryError):
            ops = []
        stations = registry.stations()
        form = {
            "action": "/reports",
            "error": error,
            "v": values,
            "provinces": sorted({s.province for s in stations}),
            "operators": sorted(set(ops) | {s.expected_operator or "" for s in stations} - {""}),
        }
        html = render_page(kw.get("report"), lang, form, kw.get("links", ()))
        return HTMLResponse(html, status, headers=_HEADERS)

    @app.get("/reports", include_in_schema=False)
    async def reports_form(request: Request) -> Response:
        if (d := denied(request)) is not None:
            return d
        lang = Lang("en" if request.query_params.get("lang") == "en" else "id")
        blank = ReportRequest("", "", lang=lang.code, formats=("csv", "xlsx", "pdf"))
        return await run_in_threadpool(page, lang, blank)

    @app.post("/reports", include_in_schema=False)
    async def reports_make(request: Request) -> Response:
        if (d := denied(request)) is not None:
            return d
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            return PlainTextResponse("cross-origin form refused", 403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return PlainTextResponse("form too large", 413)
        form = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)

        def one(key: str) -> str | None:
            v = (form.get(key) or [""])[0].strip()
            return v or None

        lang = Lang("en" if one("lang") == "en" else "id")
        try:
            interval = float(one("interval") or 60)
        except ValueError:
            interval = -1.0
        req = ReportRequest(
            start=one("from") or "",
            end=one("to") or "",
            zone=one("zone"),
            province=one("province"),
            regency=one("regency"),
            operator=one("operator"),
            station=one("station"),
            voting_hours=one("voting_hours") is not None,
            lang=lang.code,
            formats=tuple(f for f in form.get("format", []) if f) or ("csv",),
            by_regency=one("by_regency") is not None,
            interval_s=interval,
        )
        async with lock:
            return await run_in_threadpool(make, lang, req)

    def make(lang: Lang, req: ReportRequest) -> Response:
        try:
            th = load_thresholds(cfg.thresholds_file)
            report = make_report(cfg.sink, req, registry.stations(), th)
            rid = secrets.token_hex(16)
            files = write_all(report, lang, req.formats, root / rid)
        except ReportError as exc:
            return page(lang, req, str(exc), 400)
        except SinkUnavailable as exc:
            return page(lang, req, f"the database does not answer: {exc}", 503)
        except QueryError as exc:
            return page(lang, req, f"the database refused a query: {exc}", 502)
        _prune(root, cfg.reports.keep)
        links = [(f.name, f"/reports/files/{rid}/{f.name}") for f in files]
        return page(lang, req, report=report, links=links)

    @app.get("/reports/files/{rid}/{name}", include_in_schema=False)
    async def reports_file(request: Request, rid: str, name: str) -> Response:
        if (d := denied(request)) is not None:
            return d
        if not _ID_RE.match(rid) or not _NAME_RE.match(name):
            return PlainTextResponse("not found", 404)
        path = root / rid / name
        if not path.is_file():
            return PlainTextResponse("not found", 404)
        return FileResponse(
            path,
            media_type=_TYPES.get(path.suffix, "application/octet-stream"),
            filename=name,
            headers=_HEADERS,
        )


def _prune(root: Path, keep: int) -> None:
    dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and _ID_RE.match(p.name)),
        key=lambda p: p.stat().st_mtime,
    )
    for p in dirs[: max(0, len(dirs) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


__all__ = ["add_report_routes"]
