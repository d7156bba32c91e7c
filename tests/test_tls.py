"""TLS (``tls`` sockets) against private brokers with a TLS listener and a test CA made here by trustme.

The broker's certificate names ``localhost`` only, so a socket for
``localhost`` verifies and one for ``127.0.0.1`` (the same listener) fails
the name check.  One broker only asks for nothing; the other requires a
client certificate signed by the same CA.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import ssl
import time

import pytest
import trustme

import opsevent
import workers
from opsevent import Status, encode_event, parse_socket
from workers.channel import job
from workers.channel.jobqueue import JobQueue
from workers.channel.replies import ReplyBox
from workers.demo.broker import BrokerTLS, PrivateBroker, consume, declare_queue
from workers.rabbitmq import tls
from workers.rabbitmq.worker import RabbitMQWorker

pytestmark = [pytest.mark.broker, pytest.mark.timeout(120)]

FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: the test CA, a broker certificate for localhost, a client certificate, and a stranger CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca, stranger = trustme.CA(), trustme.CA()
    files = {}

    def write(name, blob):
        files[name] = str(folder / name)
        blob.write_to_path(files[name])

    write("ca.pem", ca.cert_pem)
    write("stranger-ca.pem", stranger.cert_pem)
    for who, identity, issuer in (("broker", "localhost", ca), ("client", "opsevent-worker", ca),
                                  ("stranger-client", "opsevent-worker", stranger)):
        cert = issuer.issue_cert(identity)
        write(f"{who}.pem", cert.cert_chain_pems[0])
        write(f"{who}.key", cert.private_key_pem)
    return files


@pytest.fixture(scope="module")
def tls_broker(pki):
    with PrivateBroker(tls=BrokerTLS(pki["ca.pem"], pki["broker.pem"], pki["broker.key"])) as b:
        yield b


@pytest.fixture(scope="module")
def mtls_broker(pki):
    tls = BrokerTLS(pki["ca.pem"], pki["broker.pem"], pki["broker.key"], require_client_cert=True)
    with PrivateBroker(tls=tls) as b:
        yield b


def tls_socket(broker, queue: str, host: str = "localhost") -> str:
    return f"rabbitmq:{host}:{broker.tls_port}/tls;?{queue}"


def raise_sync(socket_text: str, **settings) -> opsevent.Delivery:
    """One sync raise through a worker of its own; the delivery."""
    evi = opsevent.EventInterface(sync_mode=True, sync_timeout=3.0, connect_timeout=2.0, **settings)
    evi.subscribe_event("E_TLS", socket_text)
    with workers.serve(evi, install_logging=False):
        (delivery,) = evi.raise_event("E_TLS", {"n": 1}).deliveries
    return delivery


def test_events_raised_to_a_tls_socket_go_over_tls_and_are_confirmed_and_consumed(tls_broker, pki, queue_name):
    declare_queue(tls_broker, queue_name)
    evi = opsevent.EventInterface(sync_mode=True, tls_ca_file=pki["ca.pem"])
    evi.subscribe_event("E_TLS", tls_socket(tls_broker, queue_name))
    with workers.serve(evi, install_logging=False):
        results = [evi.raise_event("E_TLS", {"n": n}) for n in range(3)]
        connections = json.loads(tls_broker.ctl("list_connections", "ssl", "ssl_protocol", "--formatter", "json",
                                                "--quiet"))
    assert all(results), [r.failures for r in results]
    assert [c["ssl"] for c in connections] == [True] and connections[0]["ssl_protocol"].startswith("tlsv1.")
    assert consume(tls_broker, queue_name, 3, timeout=5) == [encode_event("E_TLS", {"n": n}) for n in range(3)]


def test_a_broker_certificate_from_another_ca_fails_the_raise_saying_certificate_verification_failed(
        tls_broker, pki, queue_name):
    delivery = raise_sync(tls_socket(tls_broker, queue_name), tls_ca_file=pki["stranger-ca.pem"])
    assert delivery.status is Status.FAILED
    assert "TLS certificate verification failed" in delivery.reason, delivery.reason
    assert pki["stranger-ca.pem"] in delivery.reason


def test_a_host_the_certificate_does_not_name_fails_unless_hostname_checking_is_off(tls_broker, pki, queue_name):
    declare_queue(tls_broker, queue_name)
    by_ip = tls_socket(tls_broker, queue_name, host="127.0.0.1")
    refused = raise_sync(by_ip, tls_ca_file=pki["ca.pem"])
    assert refused.status is Status.FAILED and "TLS certificate verification failed" in refused.reason
    assert "127.0.0.1" in refused.reason and "tls_verify_hostname=False" in refused.reason, refused.reason
    # Off, the chain is still verified: the stranger CA still fails.
    assert raise_sync(by_ip, tls_ca_file=pki["ca.pem"], tls_verify_hostname=False).status is Status.CONFIRMED
    assert raise_sync(by_ip, tls_ca_file=pki["stranger-ca.pem"], tls_verify_hostname=False).status is Status.FAILED


def test_a_broker_requiring_client_certificates_accepts_ours_and_says_so_when_we_send_none(
        mtls_broker, pki, queue_name):
    declare_queue(mtls_broker, queue_name)
    sock = tls_socket(mtls_broker, queue_name)
    with_cert = raise_sync(sock, tls_ca_file=pki["ca.pem"], tls_cert_file=pki["client.pem"],
                           tls_key_file=pki["client.key"])
    without = raise_sync(sock, tls_ca_file=pki["ca.pem"])
    foreign = raise_sync(sock, tls_ca_file=pki["ca.pem"], tls_cert_file=pki["stranger-client.pem"],
                         tls_key_file=pki["stranger-client.key"])
    assert with_cert.status is Status.CONFIRMED, with_cert.reason
    assert without.status is Status.FAILED
    # TLS 1.2 brings the broker's alert; with TLS 1.3 it may be lost as the broker hangs up.
    assert "client certificate: set tls_cert_file and tls_key_file" in without.reason, without.reason
    assert foreign.status is Status.FAILED and "does not trust our client certificate" in foreign.reason, \
        foreign.reason
    assert consume(mtls_broker, queue_name, 1, timeout=5) == [encode_event("E_TLS", {"n": 1})]


@pytest.mark.parametrize("setting, problem, expected", [
    ("tls_ca_file", "missing", "tls_ca_file '{path}' cannot be read: No such file or directory"),
    ("tls_ca_file", "garbage", "tls_ca_file '{path}' holds no usable PEM CA certificate"),
    ("tls_cert_file", "missing", "tls_cert_file '{path}' cannot be read: No such file or directory"),
    ("tls_key_file", "garbage", "tls_cert_file '{cert}' and tls_key_file '{path}' are not a usable PEM "
                                "certificate and matching key"),
])
def test_a_tls_file_the_worker_cannot_use_fails_sync_raises_and_is_logged_for_async_ones_naming_the_file(
        tls_broker, pki, tmp_path, caplog, setting, problem, expected):
    path = str(tmp_path / "broken.pem")
    if problem == "garbage":
        with open(path, "w") as f:
            f.write("not a PEM file\n")
    files = {"tls_ca_file": pki["ca.pem"], "tls_cert_file": pki["client.pem"], "tls_key_file": pki["client.key"],
             setting: path}
    jobs = JobQueue(FORK, maxsize=10)
    worker = RabbitMQWorker(jobs, opsevent.Settings(reconnect_min=5.0, reconnect_max=5.0, **files))
    worker.init_process(install_signals=False)
    try:
        sockets = [parse_socket(tls_socket(tls_broker, "q"))]
        box = ReplyBox()
        box.expect(1)
        with caplog.at_level(logging.WARNING, logger="workers.rabbitmq.link"):
            worker.handle(job.pack(sockets, b"E_ASYNC\n", raised_at=time.monotonic()))
            worker.handle(job.pack(sockets, b"E_SYNC\n", seq=1, reply=box.address, raised_at=time.monotonic()))
            deadline = time.monotonic() + 5
            while worker.stats["failed"] < 1 and time.monotonic() < deadline:
                worker.loop_once()
        ((status, reason),) = box.wait(1, time.monotonic() + 1)
    finally:
        worker.shutdown()
        jobs.close()
    want = expected.format(path=path, cert=pki["client.pem"])
    assert status == "failed" and want in reason, reason
    logged = [r.getMessage() for r in caplog.records if want in r.getMessage()]
    assert logged and "1 events waiting" in logged[0], logged  # the async one waits, logged


EOF_OR_ALERTS = [
    # what the TLS layer said, whether we sent a client certificate, what the reason must say (None: no account)
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"), False,
     "it probably requires a client certificate: set tls_cert_file and tls_key_file"),
    (ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"), True, None),
    (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"), False,
     "the broker requires a client certificate: set tls_cert_file and tls_key_file"),
    (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), True, "the port does not speak TLS"),
]


@pytest.mark.parametrize("error, client_cert, says", EOF_OR_ALERTS)
def test_a_failed_handshake_is_explained_by_what_the_tls_layer_said_and_whether_we_sent_a_certificate(
        error, client_cert, says):
    reason = tls.explain(error, "/etc/opsevent/ca.pem", client_cert)
    assert reason is None if says is None else says in reason, reason


# --- OpenSIPS 3.2's tls_domain=NAME: a named set of TLS files -------------------------------

def test_a_tls_domain_socket_connects_with_its_domains_files_and_a_bare_tls_socket_with_the_settings(
        mtls_broker, pki, queue_name):
    mine, theirs = queue_name, queue_name + ".bare"
    for q in (mine, theirs):
        declare_queue(mtls_broker, q)
    # The tls_* settings are wrong for this broker; the domain is right.
    evi = opsevent.EventInterface(
        sync_mode=True, sync_timeout=3.0, connect_timeout=2.0, tls_ca_file=pki["stranger-ca.pem"],
        tls_domains={"rmq": opsevent.TLSDomain(ca_file=pki["ca.pem"], cert_file=pki["client.pem"],
                                               key_file=pki["client.key"])})
    evi.subscribe_event("E_TLS", f"rabbitmq:localhost:{mtls_broker.tls_port}/tls_domain=rmq?{mine}")
    evi.subscribe_event("E_TLS", tls_socket(mtls_broker, theirs))
    with workers.serve(evi, install_logging=False):
        by_domain, bare = evi.raise_event("E_TLS", {"n": 1}).deliveries
    assert by_domain.status is Status.CONFIRMED, by_domain.reason
    assert bare.status is Status.FAILED and pki["stranger-ca.pem"] in bare.reason, bare.reason
    assert consume(mtls_broker, mine, 1, timeout=5) == [encode_event("E_TLS", {"n": 1})]


@pytest.mark.parametrize("domain, expected", [
    ({"ca_file": "{missing}"}, "tls_domains['rmq'].ca_file '{missing}' cannot be read"),
    ({"ca_file": "{ca}", "cert_file": "{ca}", "key_file": "{ca}"},
     "tls_domains['rmq'].cert_file '{ca}' and tls_domains['rmq'].key_file '{ca}' are not a usable PEM"),
    (None, "the socket names tls_domain 'rmq' is not in the tls_domains setting (no tls_domains are set)"),
])
def test_a_tls_domain_the_worker_cannot_use_fails_the_raise_naming_the_domain(pki, tmp_path, domain, expected):
    paths = {"missing": str(tmp_path / "missing.pem"), "ca": pki["ca.pem"]}
    domains = {} if domain is None else {"rmq": {k: v.format(**paths) for k, v in domain.items()}}
    settings = opsevent.Settings(tls_domains=domains)
    # Straight to the worker's side: subscribe_event would refuse the unknown domain first.
    with pytest.raises(tls.TLSSetupError) as caught:
        tls.client_context(tls.settings_for(settings, parse_socket("rabbitmq:localhost/tls_domain=rmq?q")))
    assert expected.format(**paths) in str(caught.value)


def test_the_domain_stands_in_for_the_four_tls_settings_only():
    settings = opsevent.Settings(heartbeat=7, tls_ca_file="/etc/ca.pem", tls_domains={
        "rmq": opsevent.TLSDomain("/etc/rmq-ca.pem", "/etc/c.pem", "/etc/c.key", verify_hostname=False)})
    seen = tls.settings_for(settings, parse_socket("rabbitmq:mq/tls_domain=rmq?k"))
    assert (seen.tls_ca_file, seen.tls_cert_file, seen.tls_key_file, seen.tls_verify_hostname) == (
        "/etc/rmq-ca.pem", "/etc/c.pem", "/etc/c.key", False)
    assert seen.heartbeat == 7 and seen.tls_domains == settings.tls_domains
    assert tls.settings_for(settings, parse_socket("rabbitmq:mq/tls;?k")) is settings
