"""POST /api/v1/enroll: exchange an enrolment code for a station's token (collector.enrolment).

Answers 200 {"station": {...}, "token": ..., "token_id": ...}; otherwise
{"error": "what happened and what to do"} with 400 (not a JSON body with a code),
404 (wrong code), 410 (used or expired), 403 (station revoked), 429 (rate limited, with
Retry-After) or 413 (body too large). The code and the token never reach a log.
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from collector.enrolment import Enrolment, EnrolmentError, RateLimiter
from collector.regdb import DatabaseError
from collector.registry import Registry

log = logging.getLogger("sinyal.collector")

PATH = "/api/v1/enroll"
MAX_BODY = 1024


def add_enrolment(app: FastAPI, registry: Registry) -> None:
    enrolment = Enrolment(registry)
    limiter = RateLimiter()
    app.state.enrolment_limiter = limiter

    @app.post(
        PATH,
        summary="Exchange an enrolment code for the station's token and config block",
        responses={
            200: {"description": "station (id, name, lat, lon, tz), token, token_id"},
            400: {"description": "Not a JSON object with a code"},
            403: {"description": "The station was revoked"},
            404: {"description": "Unknown code"},
            410: {"description": "The code was used or has expired"},
            429: {"description": "Too many failed attempts from this address"},
        },
    )
    async def enroll(request: Request) -> JSONResponse:
        source = request.client.host if request.client else "unknown"
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": "body too large"}, 413)
        try:
            doc = json.loads(body)
            code = doc["code"] if isinstance(doc, dict) else None
        except (ValueError, KeyError):
            code = None
        if not isinstance(code, str):
            return JSONResponse({"error": 'expected a JSON object {"code": "XXXXX-XXXXX"}'}, 400)
        try:
            done = await run_in_threadpool(enrolment.exchange, code, source, limiter)
        except DatabaseError as exc:
            log.warning("enrolment from %s failed: %s", source, exc)
            return JSONResponse(
                {"error": "the registry is unavailable: try again in a minute"},
                503,
                headers={"Retry-After": "60"},
            )
        except EnrolmentError as exc:
            headers = {}
            if exc.retry_after_s is not None:
                headers["Retry-After"] = str(int(exc.retry_after_s + 0.999))
            log.info("enrolment refused for %s: HTTP %d", source, exc.status)
            return JSONResponse({"error": str(exc)}, exc.status, headers=headers)
        log.info("enrolled station %s from %s (token %s)", done.station.id, source, done.token_id)
        return JSONResponse(done.answer(), headers={"Cache-Control": "no-store"})
