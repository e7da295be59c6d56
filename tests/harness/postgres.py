"""A real PostgreSQL server for the tests and benchmarks: Debian's postgresql package (15),
a throwaway cluster in a temp dir on a free loopback port, started once per test session.

postgres refuses to run as root, so under root the cluster belongs to the ``postgres``
user the package creates (or ``nobody``) and is started with runuser. TCP connections
need the superuser's password (scram-sha-256), so the tests go through the same password
handling as a deployment; the unix socket in the temp dir trusts its owner only.

Fixtures: ``postgres_server`` (session), ``pg_url`` (a new empty database per test; the
password is ``postgres_server.password``), ``registry_backend`` (parametrized: a test runs
on a SQLite file and on a PostgreSQL database). Without the server binaries they skip with a
reason (and fail in CI). Load with ``pytest_plugins = ["tests.harness.postgres"]``;
benchmarks use the `postgres` context manager directly.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.registry import Registry
from tests.conftest import require
from tests.harness.servers import LOOPBACK, free_port

SUPERUSER = "postgres"


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (Debian's layout)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def _run_as() -> str | None:
    """The user to run the server as when we are root (postgres refuses root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    return None


@dataclass
class PostgresServer:
    host: str
    port: int
    password: str
    socket_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """A URL without the password (give it separately, as a deployment does)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg

        return psycopg.connect(self.url(database), password=self.password, autocommit=True)

    def create_database(self) -> str:
        """A new empty database; returns its URL (without the password)."""
        name = "t_" + uuid.uuid4().hex[:16]
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" STRATEGY FILE_COPY')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with contextlib.suppress(Exception), self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # SIGTERM: smart shutdown; SIGINT would be fast
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextlib.contextmanager
def postgres(
    bin_dir: Path, *, durable: bool = False, startup_s: float = 30.0
) -> Iterator[PostgresServer]:
    """A throwaway cluster on a free loopback port. durable=False turns fsync off (tests);
    the benchmarks pass True to measure what a deployment would see."""
    user = _run_as()
    if os.geteuid() == 0 and user is None:
        raise RuntimeError("running as root and no postgres or nobody user to run the server as")
    prefix = ["runuser", "-u", user, "--"] if user else []
    with tempfile.TemporaryDirectory(prefix="sinyal-pg-") as tmp:
        root = Path(tmp)
        data, sock = root / "data", root / "sock"
        sock.mkdir()
        password = secrets.token_urlsafe(18)
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        if user:
            entry = pwd.getpwnam(user)
            for p in (root, sock, pwfile):
                os.chown(p, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), "-U", SUPERUSER,
             f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        pwfile.unlink()
        log_path = root / "postgres.log"
        settings = [
            "listen_addresses=" + LOOPBACK,
            f"unix_socket_directories={sock}",
            "max_connections=200",
            "shared_buffers=128MB",
            "logging_collector=off",
        ]
        if not durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        for _attempt in range(3):  # a port can be taken between free_port() and the bind
            port = free_port()
            args = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
            for s in settings:
                args += ["-c", s]
            with log_path.open("ab") as log:
                if user:
                    os.chown(log_path, pwd.getpwnam(user).pw_uid, -1)
                proc = subprocess.Popen([*prefix, *args], stdout=log, stderr=subprocess.STDOUT)
            server = PostgresServer(LOOPBACK, port, password, sock, proc, log_path)
            if _wait_ready(server, startup_s):
                break
            server.stop()
        else:
            raise RuntimeError(f"postgres did not start:\n{log_path.read_text(errors='replace')}")
        try:
            yield server
        finally:
            server.stop()


def _wait_ready(server: PostgresServer, deadline_s: float) -> bool:
    import psycopg

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            with server.connect():
                return True
        except psycopg.OperationalError:
            time.sleep(0.1)
    return False


def require_postgres() -> Path:
    found = pg_bin()
    require(
        found is not None,
        "needs PostgreSQL's server binaries (apt-get install postgresql; .ci/run does)",
    )
    assert found is not None
    return found


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with postgres(require_postgres()) as server:
        yield server


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new empty database on the session's server (its URL, without the password)."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@dataclass
class RegistryBackend:
    """Where a test's registry lives: a SQLite file or a PostgreSQL database."""

    name: str  # "sqlite" or "postgres"
    target: str | Path
    password: str | None = None

    def open(self, **kwargs: Any) -> Registry:
        return Registry(self.target, password=self.password, **kwargs)

    def config(self, tmp_path: Path) -> dict[str, Any]:
        """The collector config's registry section for it (a password file when needed)."""
        if self.name == "sqlite":
            return {"path": str(self.target)}
        pw = tmp_path / "registry-password"
        pw.write_text(f"{self.password}\n")
        pw.chmod(0o600)
        return {"url": str(self.target), "password_file": str(pw)}


@pytest.fixture(params=["sqlite", "postgres"])
def registry_backend(request: pytest.FixtureRequest, tmp_path: Path) -> RegistryBackend:
    """Each test using it runs twice: on a SQLite file and on a new PostgreSQL database."""
    if request.param == "sqlite":
        return RegistryBackend("sqlite", tmp_path / "data" / "registry.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(url))
    return RegistryBackend("postgres", url, server.password)
