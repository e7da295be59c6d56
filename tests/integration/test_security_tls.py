"""Issue 15, finding 6 (collector side): `listen.tls` served by uvicorn, checked by the agent's
own uploader and by httpx with trustme certificates: a good certificate, the wrong host, an
expired one, one the client has no CA for, and client certificates (mutual TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trustme

from agent.config import CollectorEndpoint
from agent.contract.record import Record
from agent.spool import Spool
from agent.uploader import Outcome, Uploader
from tests.harness.collector_process import (
    STATION,
    CollectorProcess,
    collector_config_file,
    collector_process,
)
from tests.harness.collector_stack import golden
from tests.harness.dbs import InfluxServer


@contextlib.contextmanager
def tls_collector(
    tmp_path: Path,
    influx: InfluxServer,
    db: str,
    leaf: trustme.LeafCert,
    ca: trustme.CA,
    client_ca: trustme.CA | None = None,
) -> Iterator[CollectorProcess]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    tls: dict[str, str] = {"cert": str(cert), "key": str(key)}
    if client_ca is not None:
        client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.pem"))
        tls["client_ca"] = str(tmp_path / "client-ca.pem")
    cfg = collector_config_file(tmp_path, influx.url, db, listen={"tls": tls})
    verify = ssl.create_default_context()
    ca.configure_trust(verify)
    verify.check_hostname = False  # the harness only waits for the port; tests check names
    verify.verify_mode = ssl.CERT_NONE
    if client_ca is not None:
        client_ca.issue_cert("harness").configure_cert(verify)
    with collector_process(cfg, verify=verify) as c:
        yield c


def agent_upload(c: CollectorProcess, tmp_path: Path, ca_file: Path | None) -> Outcome | None:
    spool = Spool(tmp_path / "spool.sqlite3")
    spool.put([Record.from_dict(golden("icmp-ok"))])
    up = Uploader(
        spool, CollectorEndpoint(c.url, token=c.token, ca_bundle=ca_file, timeout_s=5), STATION
    )

    async def once() -> Outcome | None:
        try:
            return await up.upload_once()
        finally:
            await up.aclose()

    return asyncio.run(once())


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_good_certificate_the_agent_uploads(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str, ca: trustme.CA
) -> None:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    with tls_collector(tmp_path, influxdb, influx_database, leaf, ca) as c:
        assert c.url.startswith("https://")
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        outcome = agent_upload(c, tmp_path, tmp_path / "ca.pem")
        assert outcome is not None and outcome.status == 200 and outcome.accepted == 1
        # Plain HTTP on the TLS port gets nothing.
        with pytest.raises(httpx.HTTPError):
            httpx.get(c.url.replace("https://", "http://") + "/healthz", timeout=5)


@pytest.mark.parametrize("case", ["wrong host", "expired", "no CA"])
def test_bad_certificates_are_refused_by_the_agent(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str, ca: trustme.CA, case: str
) -> None:
    if case == "wrong host":
        leaf = ca.issue_cert("collector.example.org")
    elif case == "expired":
        past = datetime.now(UTC) - timedelta(days=30)
        leaf = ca.issue_cert("127.0.0.1", not_before=past, not_after=past + timedelta(days=1))
    else:
        leaf = ca.issue_cert("127.0.0.1")
    trusted = ca if case != "no CA" else trustme.CA()  # a self-signed CA the agent lacks
    trusted.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with tls_collector(tmp_path, influxdb, influx_database, leaf, ca) as c:
        outcome = agent_upload(c, tmp_path, tmp_path / "ca.pem")
        assert outcome is not None and outcome.status is None, outcome
        assert outcome.error is not None and "TLS failure" in outcome.error
        assert len(Spool(tmp_path / "spool.sqlite3").ids()) == 1  # kept for later
        # Without any CA bundle (the system's trust store) it is refused too.
        with pytest.raises(httpx.ConnectError):
            httpx.get(c.url + "/healthz", timeout=5)


def test_client_certificates_when_client_ca_is_set(
    tmp_path: Path, influxdb: InfluxServer, influx_database: str, ca: trustme.CA
) -> None:
    client_ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    with tls_collector(tmp_path, influxdb, influx_database, leaf, ca, client_ca) as c:
        no_cert = ssl.create_default_context()
        ca.configure_trust(no_cert)
        with pytest.raises(httpx.HTTPError):
            httpx.get(c.url + "/healthz", verify=no_cert, timeout=5)
        wrong = ssl.create_default_context()
        ca.configure_trust(wrong)
        trustme.CA().issue_cert("intruder").configure_cert(wrong)
        with pytest.raises(httpx.HTTPError):
            httpx.get(c.url + "/healthz", verify=wrong, timeout=5)
        good = ssl.create_default_context()
        ca.configure_trust(good)
        client_ca.issue_cert("station-3171011001001").configure_cert(good)
        assert httpx.get(c.url + "/healthz", verify=good, timeout=5).status_code == 200
