"""The enrolment sheet for field teams: one card per station with its name, TPS code,
enrolment code, expiry (in the station's own zone) and a QR code, as a PDF (fpdf2; QR codes
by segno). The QR code holds the command to type on the device, so a phone can show it."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from agent.contract.record import parse_time
from collector.enrolment import IssuedCode

CARDS_PER_PAGE = 4  # A4 portrait, one below the other: big enough to read in the field


def command(collector_url: str | None, code: str) -> str:
    url = collector_url or "https://COLLECTOR"
    return f"sinyal-agent enroll --collector {url} {code}"


def local_expiry(issued: IssuedCode) -> str:
    from zoneinfo import ZoneInfo

    when = parse_time(issued.expires_at).astimezone(ZoneInfo(issued.station.tz))
    return when.strftime("%Y-%m-%d %H:%M %Z")


def write_pdf(path: Path, codes: Sequence[IssuedCode], collector_url: str | None) -> None:
    import segno
    from fpdf import FPDF

    pdf = FPDF(orientation="P", unit="mm", format="A4")
    pdf.set_title("Sinyal enrolment codes")
    pdf.set_author("sinyal-collector agents enroll")
    pdf.set_auto_page_break(False)
    card_h = 297 / CARDS_PER_PAGE
    for i, issued in enumerate(codes):
        if i % CARDS_PER_PAGE == 0:
            pdf.add_page()
        top = (i % CARDS_PER_PAGE) * card_h
        st = issued.station
        qr = segno.make(command(collector_url, issued.code), error="m")
        png = io.BytesIO()
        qr.save(png, kind="png", scale=6, border=2)
        png.seek(0)
        pdf.image(png, x=12, y=top + 8, w=card_h - 16, h=card_h - 16)
        x = card_h + 2
        pdf.set_xy(x, top + 10)
        pdf.set_font("Helvetica", "B", 14)
        pdf.cell(0, 7, _latin1(st.name), new_x="LEFT", new_y="NEXT")
        pdf.set_font("Helvetica", "", 10)
        pdf.cell(0, 6, _latin1(f"TPS {st.id} - {st.regency}, {st.province}"), new_x="LEFT",
                 new_y="NEXT")  # fmt: skip
        pdf.set_font("Courier", "B", 22)
        pdf.cell(0, 12, issued.code, new_x="LEFT", new_y="NEXT")
        pdf.set_font("Helvetica", "", 9)
        pdf.cell(0, 5, f"single use; expires {local_expiry(issued)}", new_x="LEFT", new_y="NEXT")
        pdf.cell(0, 5, "on the device, as root:", new_x="LEFT", new_y="NEXT")
        pdf.set_font("Courier", "", 8)
        pdf.multi_cell(210 - x - 8, 4, _latin1(command(collector_url, issued.code)))
        pdf.set_draw_color(160, 160, 160)
        pdf.line(5, top + card_h - 0.5, 205, top + card_h - 0.5)
    data = bytes(pdf.output())
    # The sheet holds live codes: readable by its owner only, and never over another file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _latin1(text: str) -> str:
    # The PDF core fonts are Latin-1; station names are Indonesian (Latin script).
    return text.encode("latin-1", "replace").decode("latin-1")
