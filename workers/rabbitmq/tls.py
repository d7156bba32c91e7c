"""TLS for the worker's broker connections: the client context, and what a failed handshake means.

The context is built in the RabbitMQ worker process, when a link first
connects over TLS, from the files the settings name; never before the fork
(a parent's OpenSSL state is not the child's to use).  It verifies the
broker's certificate against ``tls_ca_file`` only (not the system's CAs):
a socket with ``tls`` and no CA file is refused, never connected
unverified.  The files are read at each new context, so a fixed file is
picked up by the next attempt.

A socket with ``tls_domain=NAME`` (OpenSIPS 3.2) connects with the files of
that domain of the ``tls_domains`` setting instead of the ``tls_*`` ones:
``settings_for(settings, socket)`` gives the settings its link uses, and
every message then names the domain's files.
"""

from __future__ import annotations

import ssl

from opsevent.tlsdomain import find_tls_domain

__all__ = ["TLSSetupError", "client_context", "explain", "settings_for"]

# OpenSSL's words for a failed handshake, and what they mean for a user;
# the first match wins.
_ALERTS = (
    ("CERTIFICATE_REQUIRED", "the broker requires a client certificate: set tls_cert_file and tls_key_file"),
    ("UNKNOWN_CA", "the broker does not trust our client certificate (tls_cert_file): "
                   "it is not signed by a CA the broker knows"),
    ("BAD_CERTIFICATE", "the broker refused our client certificate (tls_cert_file)"),
    ("WRONG_VERSION_NUMBER", "the port does not speak TLS: is it the broker's plain AMQP port?"),
)


class TLSSetupError(Exception):
    """The TLS settings cannot be used; the message names the setting and the file."""


class DomainSettings:
    """The worker's settings as a ``tls_domain=NAME`` socket's link sees them.

    The domain's files and hostname check stand in for the four ``tls_*``
    settings; every other setting is the worker's.  A name the settings do
    not hold (a socket subscribed past ``EventInterface.subscribe_event``)
    fails the link's connects with the reason, instead of the worker.
    """

    def __init__(self, settings, name: str):
        self._settings = settings
        self.tls_domain = name
        try:
            domain = find_tls_domain(settings.tls_domains, name)
        except ValueError as exc:
            self.tls_domain_error = str(exc)
            self.tls_ca_file = self.tls_cert_file = self.tls_key_file = None
            self.tls_verify_hostname = True
            return
        self.tls_domain_error = None
        self.tls_ca_file, self.tls_cert_file = domain.ca_file, domain.cert_file
        self.tls_key_file, self.tls_verify_hostname = domain.key_file, domain.verify_hostname

    def __getattr__(self, name):  # only for what __init__ did not set
        return getattr(self._settings, name)


def settings_for(settings, socket):
    """The settings the link of *socket* connects with: its TLS domain's files, if it names one."""
    if getattr(socket, "tls_domain", None) is None:
        return settings
    return DomainSettings(settings, socket.tls_domain)


def client_context(settings) -> ssl.SSLContext:
    """A client context from ``tls_ca_file`` (and the client certificate, if set)."""
    domain = getattr(settings, "tls_domain", None)
    if domain is not None and settings.tls_domain_error:
        raise TLSSetupError(f"the socket names {settings.tls_domain_error}")
    # What the messages call the files: the settings, or the domain's fields.
    names = (("tls_ca_file", "tls_cert_file", "tls_key_file") if domain is None else
             tuple(f"tls_domains[{domain!r}].{field}" for field in ("ca_file", "cert_file", "key_file")))
    ca = settings.tls_ca_file
    if ca is None:
        raise TLSSetupError("the socket asks for 'tls' but the tls_ca_file setting is not set: without a CA "
                            "file the broker's certificate cannot be verified, so the worker does not connect")
    cert, key = settings.tls_cert_file, settings.tls_key_file
    for name, path in zip(names, (ca, cert, key)):
        if path is not None:
            _check_readable(name, path)
    # PROTOCOL_TLS_CLIENT: CERT_REQUIRED and hostname checking from the start.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = settings.tls_verify_hostname
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TLSSetupError(f"{names[0]} '{ca}' holds no usable PEM CA certificate ({exc.reason or exc})") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key, password=_encrypted(names[2], key))
        except ssl.SSLError as exc:
            raise TLSSetupError(f"{names[1]} '{cert}' and {names[2]} '{key}' are not a usable PEM "
                                f"certificate and matching key ({exc.reason or exc})") from None
    return context


def _check_readable(name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSSetupError(f"{name} '{path}' cannot be read: {exc.strerror or exc}") from None


def _encrypted(name: str, key: str):
    # Without a password callback OpenSSL would prompt on the terminal: the
    # worker would hang on a passphrase nobody types.
    def refuse():
        raise TLSSetupError(f"{name} '{key}' is encrypted; the worker needs an unencrypted key")
    return refuse


def explain(error: BaseException, ca_file: str | None, client_cert: bool = True) -> str | None:
    """A user's account of a failed TLS handshake, or None when *error* is not one.

    ``client_cert``: whether we offered a client certificate.  In TLS 1.3 a
    broker that wants one checks it after our side of the handshake is done,
    and its alert may be lost as it drops the connection: we see only an EOF.
    """
    if isinstance(error, ssl.SSLCertVerificationError):
        why = (error.verify_message or str(error)).rstrip(".")
        hint = "; tls_verify_hostname=False skips the name check" if "mismatch" in why else ""
        return f"TLS certificate verification failed: {why} (tls_ca_file '{ca_file}'{hint})"
    text = str(error)
    for word, meaning in _ALERTS:
        if word in text:
            return f"TLS handshake failed: {meaning}"
    if not client_cert and "EOF occurred in violation of protocol" in text:
        return ("TLS handshake failed: the broker closed the connection as it began; it probably requires "
                "a client certificate: set tls_cert_file and tls_key_file")
    return None
