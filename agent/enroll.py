"""`sinyal-agent enroll --collector URL CODE`: a station reporting from one command.

Exchanges the enrolment code from the control room's sheet (POST /api/v1/enroll, see
collector/enrolment.py) for the station's token and its station block (id, name, lat, lon,
tz from the registry); writes the token to the token file (0600, owned by the agent's user
when run as root), puts the station block and the collector's URL into the config (the
other sections and their comments stay as they are), checks the result like check-config,
runs the doctor's checks, and (re)starts the systemd service when it is installed.
The token is never printed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.contract.configkit import STATION_ID_RE, timezone

SERVICE = "sinyal-agent"
DEFAULT_TOKEN_FILE = Path("/etc/sinyal/token")
AGENT_USER = "sinyal"
PATH = "/api/v1/enroll"
_TOP_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:")


class EnrollError(Exception):
    """The enrolment did not happen; the message says why and what to do."""


@dataclass(frozen=True)
class Answer:
    station: dict[str, Any]
    token: str
    token_id: str


def exchange(collector_url: str, code: str, ca_bundle: Path | None, timeout_s: float) -> Answer:
    import httpx

    from agent import __version__
    from agent.uploadstate import classify_exception

    host = httpx.URL(collector_url).host
    verify: str | bool = str(ca_bundle) if ca_bundle else True
    try:
        with httpx.Client(
            base_url=collector_url.rstrip("/"),
            timeout=timeout_s,
            verify=verify,
            headers={"User-Agent": f"sinyal-agent/{__version__}"},
        ) as client:
            r = client.post(PATH, json={"code": code})
    except httpx.HTTPError as exc:
        raise EnrollError(classify_exception(exc, host)[1]) from None
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if r.status_code != 200:
        why = doc.get("error") if isinstance(doc, dict) else None
        raise EnrollError(why or f"the collector answered HTTP {r.status_code} (is it Sinyal?)")
    return _answer(doc)


def _answer(doc: Any) -> Answer:
    bad = EnrollError("the collector's answer is not an enrolment (is the URL right?)")
    if not isinstance(doc, dict) or not isinstance(doc.get("station"), dict):
        raise bad
    st, token, token_id = doc["station"], doc.get("token"), doc.get("token_id")
    if not isinstance(token, str) or not isinstance(token_id, str):
        raise bad
    ok = (
        isinstance(st.get("id"), str)
        and STATION_ID_RE.fullmatch(st["id"]) is not None
        and isinstance(st.get("name"), str)
        and 0 < len(st["name"]) <= 200
        and st["name"].isprintable()
        and all(
            isinstance(st.get(k), int | float) and not isinstance(st.get(k), bool)
            for k in ("lat", "lon")
        )
        and -90 <= st["lat"] <= 90
        and -180 <= st["lon"] <= 180
        and timezone(st.get("tz")) is not None
        and re.fullmatch(r"[A-Za-z0-9_\-]{8,256}", token) is not None
    )
    if not ok:
        raise bad
    station = {k: st[k] for k in ("id", "name", "lat", "lon", "tz")}
    return Answer(station, token, token_id)


def write_token(path: Path, token: str) -> None:
    """Atomically, mode 0600, owned by the agent's user when root runs this and it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".token-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        owner = _agent_user()
        if owner is not None:
            os.chown(tmp, owner.pw_uid, owner.pw_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written (created or replaced) by this process, or None."""
    try:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent  # it will be created under the nearest existing directory
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot write {path}: no write permission in {parent}"
        if path.exists() and not os.access(path, os.W_OK):
            return f"cannot write {path}: no write permission"
    except OSError as exc:  # a directory on the way that this user may not enter
        return f"cannot write {path}: {exc.strerror}"
    return None


def _agent_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(AGENT_USER)
    except KeyError:
        return None


def replace_block(text: str, key: str, block: str) -> str:
    """`text` with its top-level `key:` section replaced by `block` (appended when absent).
    Other sections, comments and blank lines are kept as they are."""
    lines = text.splitlines(keepends=True)
    start = next(
        (i for i, line in enumerate(lines) if (m := _TOP_KEY_RE.match(line)) and m[1] == key),
        None,
    )
    if start is None:
        sep = "" if not text or text.endswith("\n") else "\n"
        return text + sep + block
    end = start + 1
    while end < len(lines) and (lines[end][:1] in (" ", "\t") or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines before the next section stay
    return "".join(lines[:start]) + block + "".join(lines[end:])


def configure(
    config_path: Path,
    answer: Answer,
    collector_url: str,
    token_file: Path,
    allow_insecure: bool = False,
) -> str | None:
    """Write the station block and the collector section into the config; returns the
    previous text (None when the file was created) so a caller can put it back."""
    old: str | None = None
    doc: Any = {}
    if config_path.exists():
        old = config_path.read_text(encoding="utf-8")
        with contextlib.suppress(yaml.YAMLError):
            doc = yaml.safe_load(old) or {}
    collector: dict[str, Any] = {"url": collector_url, "token_file": str(token_file)}
    if allow_insecure:  # plain http outside loopback, asked for with --allow-insecure
        collector["allow_insecure"] = True
    previous = doc.get("collector") if isinstance(doc, dict) else None
    if isinstance(previous, dict):
        for key in ("ca_bundle", "timeout_s"):
            if key in previous:
                collector[key] = previous[key]

    def dump(key: str, value: Any) -> str:
        return yaml.safe_dump({key: value}, sort_keys=False, allow_unicode=True)

    text = old if old is not None else _NEW_CONFIG
    text = replace_block(text, "station", dump("station", answer.station))
    text = replace_block(text, "collector", dump("collector", collector))
    config_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".agent-", dir=config_path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, config_path)
    return old


# A config for a device that has none: ICMP to the collector's host, the shipped thresholds.
_NEW_CONFIG = """\
# Written by `sinyal-agent enroll`; see docs/configuration.md for every key.
station: {}
collector: {}
probes:
  icmp:
    targets: []
data_dir: /var/lib/sinyal
thresholds_file: /etc/sinyal/thresholds.yaml
"""


def new_config_targets(text: str, collector_host: str) -> str:
    return text.replace("    targets: []", f"    targets:\n      - {{host: {collector_host}}}")


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


def start_service() -> tuple[bool, str]:
    """(started?, what happened in words)."""
    if not systemd_running():
        return False, "systemd is not running here"
    known = subprocess.run(
        ["systemctl", "cat", f"{SERVICE}.service"], capture_output=True, text=True, timeout=30
    )
    if known.returncode != 0:
        return False, f"the {SERVICE} service is not installed (deploy/install.sh installs it)"
    done = subprocess.run(
        ["systemctl", "enable", "--now", f"{SERVICE}.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode == 0:
        done = subprocess.run(
            ["systemctl", "restart", f"{SERVICE}.service"], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    if done.returncode != 0:
        return False, f"systemctl failed: {done.stderr.strip() or done.stdout.strip()}"
    return True, f"{SERVICE} enabled and (re)started: `journalctl -u {SERVICE} -f` shows it"
