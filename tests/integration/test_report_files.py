"""The report's files and page, checked as a reader would: the PDF rendered to PNG pages
(pdftoppm), its text boxes inside the margins and its long tables repeating their headers
(pdftotext -bbox / -layout); the /reports page driven in headless Chromium over the DevTools
protocol (form submitted by the browser, preview, downloads, a screenshot kept as an
artefact); and the user's mistakes (exit 1, a clear message, no file left behind).
"""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, require_tool
from tests.harness.dbs import InfluxServer
from tests.harness.report_fleet import SILENT_ALL
from tests.harness.report_stack import INTERVAL_S, Seeded, seeded
from tests.harness.servers import free_port

pytestmark = pytest.mark.slow
MARGIN_PT = 12 / 25.4 * 72  # the template's left/right page margin, 12 mm
TOP_PT = 14 / 25.4 * 72
ARTEFACTS = Path(os.environ.get("SINYAL_ARTIFACTS", ROOT / "var" / "artifacts"))


@pytest.fixture(scope="module")
def fleet_db(influxdb: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    influxdb.create_database("report_files")
    with seeded(influxdb, "report_files", tmp_path_factory.mktemp("rf")) as s:
        yield s


def report(cfg: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector.cli", "-c", str(cfg), "report",
         "--interval", str(INTERVAL_S), "--out", str(out), *args],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip


# --- PDF -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pdf(fleet_db: Seeded, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pdf") / "r"
    d0, d1 = fleet_db.dates
    r = report(fleet_db.config_path, out, "--from", d0, "--to", d1, "--format", "pdf",
               "--by-regency")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out / "report.pdf"


def test_pdf_pages_render_and_text_stays_inside_the_margins(pdf: Path, tmp_path: Path) -> None:
    from PIL import Image

    info = subprocess.run([require_tool("pdfinfo"), str(pdf)], capture_output=True, text=True)
    pages = int(re.search(r"Pages:\s+(\d+)", info.stdout).group(1))  # type: ignore[union-attr]
    size = re.search(r"Page size:\s+([\d.]+) x ([\d.]+) pts \(A4\)", info.stdout)
    assert size, info.stdout  # A4
    width, height = float(size.group(1)), float(size.group(2))
    assert width > height  # landscape
    assert 8 <= pages <= 80
    subprocess.run([require_tool("pdftoppm"), "-r", "30", "-png", str(pdf), str(tmp_path / "p")],
                   check=True)  # fmt: skip
    pngs = sorted(tmp_path.glob("p-*.png"))
    assert len(pngs) == pages
    for png in pngs:
        with Image.open(png) as im:
            lo, hi = im.convert("L").getextrema()
        assert lo < 128 < hi, f"{png.name} is blank"
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(pngs[0], ARTEFACTS / "report-pdf-cover.png")
    bbox = subprocess.run([require_tool("pdftotext"), "-bbox", str(pdf), "-"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    words = re.findall(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">'
                       r"([^<]*)</word>", bbox)  # fmt: skip
    assert len(words) > 2000
    outside = [
        w
        for w in words
        if float(w[0]) < MARGIN_PT - 1
        or float(w[2]) > width - MARGIN_PT + 1
        or float(w[1]) < TOP_PT - 1
        or float(w[3]) > height
    ]
    assert not outside, outside[:10]


def test_pdf_tables_repeat_their_headers_on_every_page(pdf: Path) -> None:
    text = subprocess.run([require_tool("pdftotext"), "-layout", str(pdf), "-"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    pages = text.split("\f")
    with_rows = [p for p in pages if re.search(r"^\s*\d{13}\s", p, re.M)]
    assert len(with_rows) >= 3  # the station table spans several pages
    for p in with_rows:
        assert re.search(r"^\s*station\s+operator", p, re.M), p[:500]
    # The cover names the period in Indonesian and every threshold's source is printed.
    assert re.search(r"\d{1,2} (Januari|Februari|Maret|April|Mei|Juni|Juli|Agustus|"
                     r"September|Oktober|November|Desember) \d{4}", pages[0])  # fmt: skip
    for source in ("PM Kominfo 2/2013", "ITU-T G.1010", "AOSP CellSignalStrengthLte"):
        assert source in text.replace("\n", " ") or source in re.sub(r"\s+", " ", text)


# --- the /reports page in Chromium ---------------------------------------------------------


class DevTools:
    """A minimal Chrome DevTools Protocol client over websocket-client."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=240, suppress_origin=True)
        self.n = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return dict(msg.get("result", {}))
            self.events.append(msg)

    def wait(self, event: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == event:
                    del self.events[: i + 1]
                    return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(event)

    def js(self, expr: str) -> Any:
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    exe = require_tool("chromium")
    profile = Path(tempfile.mkdtemp(prefix="sinyal-chromium-"))
    proc = subprocess.Popen(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking", "--disable-sync",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--window-size=1400,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "chromium.log").open("wb"),
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 90
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, (
                "chromium did not start: " + (tmp_path / "chromium.log").read_text()[-2000:]
            )
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=10).json()
        page = next(t for t in targets if t["type"] == "page")
        yield DevTools(page["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def test_report_page_in_headless_chromium(
    fleet_db: Seeded, chromium: DevTools, tmp_path: Path
) -> None:
    cdp = chromium
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    cdp.call("Page.enable")
    cdp.call("Network.enable")
    cdp.call("Network.setExtraHTTPHeaders",
             headers={"Authorization": f"Bearer {fleet_db.admin_token}"})  # fmt: skip
    cdp.call("Page.setDownloadBehavior", behavior="allow", downloadPath=str(downloads))
    cdp.call("Page.navigate", url=f"{fleet_db.url}/reports?lang=en")
    cdp.wait("Page.loadEventFired")
    assert cdp.js("document.querySelectorAll('form input[name=from]').length") == 1
    assert cdp.js("document.scripts.length") == 0
    d0, d1 = fleet_db.dates
    # The browser submits the form itself (a POST of the form's fields); the page has no script.
    cdp.js(
        f"""(() => {{ const f = document.forms[0];
        f.elements['from'].value = '{d0}'; f.elements['to'].value = '{d1}';
        f.elements['interval'].value = '{INTERVAL_S}'; f.elements['lang'].value = 'en';
        for (const c of f.querySelectorAll('input[name=format]')) c.checked = c.value !== 'pdf';
        f.requestSubmit(); }})()"""
    )
    cdp.wait("Page.loadEventFired")
    text = cdp.js("document.body.innerText")
    assert "Per polling station" in text, text[:2000]
    # The seeded verdicts: the silent station, degraded stations not meeting thresholds.
    silent = fleet_db.stations[SILENT_ALL]
    row = cdp.js(
        f"Array.from(document.querySelectorAll('tr')).map(r => r.innerText)"
        f".filter(t => t.startsWith('{silent.id}'))"
    )
    assert row and any("silent" in r for r in row), row
    overall = cdp.js(
        "Array.from(document.querySelectorAll('table.overall tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.innerText))"
    )
    assert {o[0] for o in overall} == {"telkomsel", "indosat", "xlsmart"}
    links = cdp.js("Array.from(document.querySelectorAll('a[href^=\"/reports/files/\"]'))"
                   ".map(a => a.getAttribute('href'))")  # fmt: skip
    names = {h.rsplit("/", 1)[1] for h in links}
    assert {"operators.csv", "stations.csv", "report.xlsx", "report.html", "manifest.json"} <= names
    assert "report.pdf" not in names
    # The preview's verdicts are the downloaded CSV's.
    cdp.js("document.querySelector('a[href$=\"/operators.csv\"]').click()")
    got = downloads / "operators.csv"
    deadline = time.monotonic() + 30
    while not got.exists():
        assert time.monotonic() < deadline, list(downloads.iterdir())
        time.sleep(0.2)
    time.sleep(0.5)
    with got.open(newline="") as f:
        verdicts = {r["operator"]: r["verdict"].replace("_", " ") for r in csv.DictReader(f)}
    assert {o[0]: o[1] for o in overall} == verdicts
    # No external assets: nothing but data: images and same-origin links.
    html = cdp.js("document.documentElement.outerHTML")
    assert not re.search(r'(src|href)="(https?:)?//', html)
    shot = cdp.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / "report-page.png").write_bytes(base64.b64decode(shot["data"]))
    assert (ARTEFACTS / "report-page.png").stat().st_size > 10_000


def test_report_page_needs_the_admin_token(fleet_db: Seeded) -> None:
    r = httpx.get(f"{fleet_db.url}/reports")
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    r = httpx.get(f"{fleet_db.url}/reports", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.get(f"{fleet_db.url}/reports", auth=("regulator", fleet_db.admin_token))
    assert r.status_code == 200 and "<script" not in r.text
    bad = httpx.get(f"{fleet_db.url}/reports/files/{'0' * 32}/..%2f..%2fregistry.sqlite3",
                    auth=("x", fleet_db.admin_token))  # fmt: skip
    assert bad.status_code == 404
    cross = httpx.post(f"{fleet_db.url}/reports", auth=("x", fleet_db.admin_token),
                       headers={"Origin": "http://evil.example"}, data={"from": "x"})  # fmt: skip
    assert cross.status_code == 403


# --- the user's mistakes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--from", "{d1}", "--to", "{d0}"), "an empty period"),
        (("--from", "2020-01-01", "--to", "2020-01-02"), "no ICMP rounds in the period"),
        (("--from", "2099-01-01", "--to", "2099-01-02"), "the period is in the future"),
        (("--from", "{d0}", "--to", "{d1}", "--operator", "xl"), "--operator: got 'xl'"),
        (("--from", "{d0}", "--to", "{d1}", "--province", "Jabar"), "--province: got 'Jabar'"),
        (("--from", "03-12-2026", "--to", "{d1}"), "expected a local date YYYY-MM-DD"),
    ],
)
def test_bad_input_exits_1_with_a_clear_message_and_no_files(
    fleet_db: Seeded, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    d0, d1 = fleet_db.dates
    out = tmp_path / "out"
    r = report(fleet_db.config_path, out, *(a.format(d0=d0, d1=d1) for a in args))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_database_down_exits_1_and_leaves_nothing(fleet_db: Seeded, tmp_path: Path) -> None:
    doc = yaml.safe_load(fleet_db.config_path.read_text())
    doc["sink"]["url"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    doc["sink"]["timeout_s"] = 2
    cfg = tmp_path / "down.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    out = tmp_path / "out"
    d0, d1 = fleet_db.dates
    r = report(cfg, out, "--from", d0, "--to", d1)
    assert r.returncode == 1
    assert "the database does not answer" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_manifest_holds_the_sha256_of_every_file(fleet_db: Seeded, tmp_path: Path) -> None:
    out = tmp_path / "m"
    d0, _ = fleet_db.dates
    r = report(fleet_db.config_path, out, "--from", d0, "--to", d0, "--format", "csv,xlsx",
               "--province", "Papua", "--lang", "en")  # fmt: skip
    assert r.returncode == 0, r.stderr
    man = json.loads((out / "manifest.json").read_text())
    names = {f["name"] for f in man["files"]}
    assert names == {p.name for p in out.iterdir()} - {"manifest.json", "SHA256SUMS"}
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True,
                           text=True)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert man["scope"]["province"] == "Papua" and man["version"]
    assert man["period"]["windows_utc"] and man["method"] and man["queries"]
    readme = (out / "README.txt").read_text()
    for table in ("operators", "provinces", "stations", "coverage", "thresholds"):
        header = (out / f"{table}.csv").read_text().splitlines()[0].split(",")
        for col in header:
            assert f"  {col}" in readme, (table, col)
