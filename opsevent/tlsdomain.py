"""TLS domains: named sets of TLS files that a socket picks with ``tls_domain=NAME``.

OpenSIPS 3.2 writes ``rabbitmq:127.0.0.1/tls_domain=rmq?pike``, where ``rmq``
is a client domain of its tls_mgm module (a CA, a certificate, a key). Here
the same socket names one of the EventInterface's ``tls_domains``::

    evi = EventInterface(tls_domains={
        "rmq": TLSDomain(ca_file="/etc/opsevent/rmq-ca.pem"),
        "cdr": {"ca_file": "/etc/opsevent/cdr-ca.pem",
                "cert_file": "/etc/opsevent/cdr.pem", "key_file": "/etc/opsevent/cdr.key"},
    })
    evi.subscribe_event("E_PIKE_BLOCKED", "rabbitmq:127.0.0.1/tls_domain=rmq?pike")

A socket with a bare ``tls`` keeps using the ``tls_ca_file``,
``tls_cert_file``, ``tls_key_file`` and ``tls_verify_hostname`` settings; a
``tls_domain=NAME`` socket uses that domain's four instead. Subscribing a
socket whose domain is not in ``tls_domains`` is refused (ConfigError naming
the domain and the ones there are). As for the ``tls_*`` settings, only
types and combinations are checked here: the RabbitMQ worker reads the
files when it connects.
"""

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["TLSDomain", "check_tls_domains", "find_tls_domain"]


@dataclass(frozen=True)
class TLSDomain:
    """The files of one TLS domain.

    ca_file
        PEM CA file the broker's certificate is verified against (required:
        the worker never connects unverified).
    cert_file (None), key_file (None)
        PEM client certificate and its unencrypted key; both or neither.
    verify_hostname (True)
        The broker's certificate must name the socket's host. (OpenSIPS's
        tls_mgm domains never check the name; False does the same here and
        still verifies the chain.)
    """

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    verify_hostname: bool = True


def check_tls_domains(value) -> tuple[tuple[str, TLSDomain], ...]:
    """The ``tls_domains`` setting as ``((name, TLSDomain), ...)``, or raise ConfigError.

    *value* maps each name to a TLSDomain, or to a mapping of its fields
    (as read from a configuration file).
    """
    if isinstance(value, tuple) and all(
            isinstance(pair, tuple) and len(pair) == 2 for pair in value):
        value = dict(value)  # already checked once: a Settings rebuilt by replace()
    if not isinstance(value, Mapping):
        raise ConfigError(f"tls_domains must map domain names to TLSDomain, not "
                          f"{type(value).__name__} {value!r}")
    domains = []
    for name, domain in value.items():
        where = f"tls_domains[{name!r}]"
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ConfigError(f"{where}: a domain name must be non-empty printable text")
        domains.append((name, _as_domain(domain, where)))
    return tuple(domains)


def find_tls_domain(domains: Iterable[tuple[str, TLSDomain]], name: str) -> TLSDomain:
    """The domain called *name*, or ConfigError naming the domains there are."""
    for known, domain in domains:
        if known == name:
            return domain
    names = ", ".join(repr(known) for known, _ in domains)
    there = f"the domains are {names}" if names else "no tls_domains are set"
    raise ConfigError(f"tls_domain {name!r} is not in the tls_domains setting ({there})")


def _as_domain(domain, where: str) -> TLSDomain:
    if isinstance(domain, Mapping):
        try:
            domain = TLSDomain(**domain)
        except TypeError as err:
            raise ConfigError(f"{where}: {err}; the fields are ca_file, cert_file, "
                              f"key_file, verify_hostname") from None
    if not isinstance(domain, TLSDomain):
        raise ConfigError(f"{where} must be a TLSDomain or a mapping of its fields, "
                          f"not {type(domain).__name__}")
    files = {name: _path(getattr(domain, name), f"{where}.{name}")
             for name in ("ca_file", "cert_file", "key_file")}
    if files["ca_file"] is None:
        raise ConfigError(f"{where}.ca_file is not set: without a CA file the broker's "
                          f"certificate cannot be verified")
    if (files["cert_file"] is None) != (files["key_file"] is None):
        raise ConfigError(f"{where}: cert_file and key_file go together (give the "
                          f"same path twice if one file holds both)")
    if type(domain.verify_hostname) is not bool:
        raise ConfigError(f"{where}.verify_hostname must be a bool, not "
                          f"{domain.verify_hostname!r}")
    return TLSDomain(verify_hostname=domain.verify_hostname, **files)


def _path(value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{where} must be a path (str) or None, not "
                          f"{type(value).__name__} {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigError(f"{where} must be a non-empty path without NUL, not {path!r}")
    return path
