r"""RabbitMQ subscriber sockets: parse, print and compare them.

The guide's grammar (admin guide 1.3; its unclosed ``[`` is closed here)::

    socket      = "rabbitmq:" [ user [ ":" password ] "@" ] host [ ":" port ] "/"
                  [ exchange "?" ] routing-key
    host        = name / "[" ipv6-address "]"
    port        = 1*DIGIT                        ; 1..65535

Examples (guide 1.4; both are the same subscriber)::

    rabbitmq:guest:guest@127.0.0.1:5672/pike
    rabbitmq:127.0.0.1/pike

Extended grammar. Every socket of the guide's form parses as before; the
extensions are OpenSIPS 3.2's parameter segment, a vhost, TLS, a body format
per subscriber and failover hosts::

    socket      = "rabbitmq:" [ user [ ":" password ] "@" ] endpoints "/"
                  [ target "?" ] routing-key
    endpoints   = endpoint *( "," endpoint )    ; first = primary, rest = failover
    endpoint    = host [ ":" port ]
    host        = name / "[" ipv6-address "]"   ; a name has no ":"
    port        = 1*DIGIT                        ; 1..65535
    routing-key = *CHAR                          ; empty only after a target that
                                                 ;   names an exchange
    target      = exchange / params              ; params if it has a raw "=" or ";"
                                                 ;   or is exactly a flag
    params      = param *( ";" param )           ; empty params are skipped
    param       = "exchange=" 1*CHAR             ; the exchange (default "")
                / "vhost=" 1*CHAR                ; the vhost (default "/")
                / "format=" ( "lines" / "json" / "opensips" )
                                                 ; the body format (default: the
                                                 ;   EventInterface's ``format``)
                / "tls"                          ; amqps; default port 5671
                / "tls_domain=" 1*CHAR           ; amqps with the files of that TLS
                                                 ;   domain (Settings.tls_domains)
                / "persistent"                   ; delivery_mode 2 (no value)

Examples::

    rabbitmq:mq/amq.fanout?                                  (a fanout exchange: no key)
    rabbitmq:mq/exchange=amq.topic;persistent?sip.message    (OpenSIPS 3.2 form)
    rabbitmq:mq/persistent?sipmsg                            (3.2's lone flag)
    rabbitmq:127.0.0.1/tls_domain=rmq?pike                   (3.2's TLS example)
    rabbitmq:alice:s3cr3t@mq1,mq2:5673/tls;?events           (TLS, two hosts)
    rabbitmq:mq/vhost=prod;format=json?pike                  (vhost, JSON bodies)

How the text is split, in this order. The rules let every field hold any
character but a control character, once the awkward ones are %-encoded:

1. The text must start with ``rabbitmq:``. Leading or trailing ASCII
   whitespace is an error, not something to guess about.
2. The authority is everything up to the first ``/``; the rest is the path.
3. The userinfo is the authority up to its *last* ``@``. It splits into user
   and password at its *first* ``:``. A user without a password gets the
   default password. User and password apply to every host.
4. The rest of the authority splits at every ``,`` into endpoints: the
   first is the primary host, the others are the failover hosts, in order.
   No endpoint may be empty, and no host:port may be listed twice.
5. Each endpoint splits into host and port at its ``:``. An endpoint with
   more than one ``:`` is refused (OpenSIPS refuses it too), unless its host
   is in brackets, which may hold ``:`` (IPv6, ``[::1]:5672``; our
   extension: OpenSIPS refuses brackets). An endpoint without a port gets
   the default port: 5671 with ``tls`` or ``tls_domain``, else 5672.
6. The path splits at its *first* ``?`` into target and routing key; with
   no ``?`` the whole path is the routing key (so an ``=`` or ``;`` in it is
   plain text). The routing key may be empty only when the target names an
   exchange: ``amq.fanout?`` publishes through a fanout exchange.
7. A target holding a raw ``=`` or ``;``, or that is exactly ``persistent``
   or ``tls``, is a parameter list (OpenSIPS 3.2): it splits at every ``;``,
   each parameter at its *first* ``=`` into name and value. Anything else
   is the exchange name, as in the guide (and OpenSIPS 2.1-3.1). So an
   exchange named ``persistent``, or with ``=`` or ``;``, is written
   ``%70ersistent``, ``%3D``, ``%3B`` in the guide's form (or
   ``exchange=...``). Refused: an unknown parameter (named in the error),
   one given twice, ``exchange=``, ``vhost=`` or ``tls_domain=`` with an
   empty value, an unknown ``format=``, and a value on a flag (``tls=1``)
   or none on the others.
8. Every field, parameter names and values included, is then %-decoded
   strictly, as OpenSIPS 1.11+ does: ``%`` must be followed by two hex
   digits that name a printable ASCII character (``%20``..``%7E``). So a
   password may contain ``@`` ``:`` ``/`` written as ``%40`` ``%3A``
   ``%2F``, a host ``,`` as ``%2C``, and a parameter value ``;`` ``?`` as
   ``%3B`` ``%3F``. Other characters are written as they are (``café``),
   except control characters (U+0000..U+001F, U+007F..U+009F), which no
   field may hold, raw or escaped: a NUL in a password would end it in SASL
   PLAIN.

Defaults: user and password ``guest``, port 5672 (5671 with ``tls``),
exchange ``''``, vhost ``/`` (the only one the guide knows, FAQ 2.3 and 2.4),
no TLS, not persistent, the interface's body format, no failover hosts.

Where this differs from OpenSIPS 3.2: a target without ``=`` or ``;`` that
is not a flag is an exchange name (3.2 reads it as parameters, which breaks
the guide's ``exchange?key``); ``tls_domain=NAME`` names one of the
EventInterface's ``tls_domains`` (3.2 names a tls_mgm domain), and a bare
``tls`` uses its ``tls_*`` files; ``vhost=``, ``format=`` and failover hosts
are ours. docs/differences.md, "Where this library differs from OpenSIPS",
lists every difference, version by version.
"""

import re
from dataclasses import dataclass, field
from urllib.parse import unquote

from .errors import SocketSyntaxError, SocketTypeError
# The body formats a socket may ask for; None means the EventInterface's own.
from .payload import FORMATS

__all__ = [
    "DEFAULT_USER",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "DEFAULT_TLS_PORT",
    "DEFAULT_EXCHANGE",
    "DEFAULT_VHOST",
    "FORMATS",
    "RabbitMQSocket",
    "parse_socket",
    "redact",
]

DEFAULT_USER = "guest"
DEFAULT_PASSWORD = "guest"
DEFAULT_PORT = 5672
DEFAULT_TLS_PORT = 5671
DEFAULT_EXCHANGE = ""
DEFAULT_VHOST = "/"

PREFIX = "rabbitmq:"
MASK = "***"
# AMQP carries exchange names, routing keys and vhosts as short strings.
_MAX_SHORTSTR = 255
# Long socket text is cut in messages so one bad input cannot flood a log.
_MAX_QUOTED = 200

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escapes OpenSIPS's un_escape() refuses: anything but printable ASCII.
_UNPRINTABLE_ESCAPE = re.compile(r"%(?:[01][0-9A-Fa-f]|7[Ff]|[89A-Fa-f][0-9A-Fa-f])")
# Control characters (Unicode's Cc): never in a field, raw or decoded.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Only ASCII whitespace around the text is refused: a field may end in
# another space character, and str() writes it raw.
_ASCII_SPACE = " \t\n\r\x0b\x0c"

# The parameters of the target segment, in the order str() writes them.
_VALUED = ("exchange", "vhost", "tls_domain", "format")
_FLAGS = ("tls", "persistent")
_PARAMS = ", ".join(sorted(_VALUED + _FLAGS))
_FORMAT_NAMES = ", ".join(map(repr, FORMATS))


@dataclass(frozen=True, repr=False)
class RabbitMQSocket:
    """Where to publish one subscriber's events, and how.

    The first seven fields are the guide's (and ``vhost``); the others are
    extensions with defaults, so ``RabbitMQSocket(*dataclasses.astuple(s))``
    rebuilds any socket and a seven-field call still works:

    tls (False)
        Connect with TLS (amqps).
    persistent (False)
        Publish with delivery_mode 2 (OpenSIPS 3.2's ``persistent``).
    format (None)
        The body format, ``"lines"``, ``"json"`` or ``"opensips"``; None
        means the EventInterface's ``format`` setting.
    failover (())
        The ``(host, port)`` pairs to try after ``host``/``port``, in order.
    tls_domain (None)
        The name of one of the EventInterface's ``tls_domains``, whose files
        the TLS connection uses (OpenSIPS 3.2's ``tls_domain=``); needs
        ``tls``. None: the ``tls_*`` settings.

    Equality says whether two sockets are the same subscriber. They are when
    they send to the same place: host, port, failover, vhost, user, tls,
    exchange and routing key are equal. Password, persistent, format and
    tls_domain are left out, as OpenSIPS leaves out the password,
    ``tls_domain`` and ``persistent``: they say how to publish, not where,
    so subscribing again with another password, ``persistent``, ``format``
    or ``tls_domain`` replaces them instead of adding a second subscriber
    for the same queue. ``tls`` and the failover hosts are compared because
    they change which broker gets the messages. Equal sockets hash alike.
    ``repr``, ``str`` and error messages show the password as ``***``.
    """

    user: str
    password: str = field(compare=False, repr=False)
    host: str
    port: int
    exchange: str
    routing_key: str
    vhost: str = DEFAULT_VHOST
    tls: bool = False
    persistent: bool = field(default=False, compare=False)
    format: str | None = field(default=None, compare=False)
    failover: tuple[tuple[str, int], ...] = ()
    tls_domain: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        failover = self.failover
        if failover or type(failover) is not tuple:
            # Lists (from JSON, say) are made tuples, so the socket hashes.
            object.__setattr__(self, "failover", _as_failover(failover))
        _check_fields((self.user, self.password, self.host, self.port,
                       self.exchange, self.routing_key, self.vhost, self.tls,
                       self.persistent, self.format, self.failover,
                       self.tls_domain), "RabbitMQSocket")

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """Every ``(host, port)`` to try, the primary first, then ``failover``."""
        return ((self.host, self.port),) + self.failover

    @property
    def broker(self) -> tuple[str, int, str, str, str, bool,
                              tuple[tuple[str, int], ...], str | None]:
        """``(host, port, user, password, vhost, tls, failover, tls_domain)``: one connection's identity.

        Sockets with the same broker share one connection. Secret-bearing:
        it holds the password. Use it as a key, never log it; log
        :attr:`broker_label` instead.
        """
        return (self.host, self.port, self.user, self.password, self.vhost,
                self.tls, self.failover, self.tls_domain)

    @property
    def broker_label(self) -> str:
        """``[amqps://]user@host:port[,host:port...]/vhost``, no password: safe for logs.

        ``amqps://`` marks a TLS connection; a plain one has no scheme. The
        failover hosts follow the primary, and the vhost is %-encoded as in
        an AMQP URI, so ``/`` shows as ``%2F``:
        ``amqps://guest@h1:5671,h2:5671/%2F``. A TLS domain follows, as
        `` (tls_domain rmq)``.
        """
        scheme = "amqps://" if self.tls else ""
        domain = "" if self.tls_domain is None else f" (tls_domain {self.tls_domain})"
        return (f"{scheme}{_escape_user(self.user)}@{self._endpoints_text()}"
                f"/{_escape_vhost(self.vhost)}{domain}")

    def __str__(self) -> str:
        """The socket as text, with the password ``***``; it parses back to an equal socket.

        A socket that uses no extension prints in the guide's form, every
        part written out: ``rabbitmq:USER:***@HOST:PORT/[EXCHANGE?]ROUTING_KEY``.
        Failover hosts follow the host (``HOST:PORT,HOST:PORT``); a vhost,
        tls, tls_domain, persistent or format puts the target in the
        parameter form:
        ``rabbitmq:USER:***@HOST:PORT/exchange=E;vhost=V;tls;persistent;format=F?KEY``
        (only the parameters that differ from the defaults; ``tls_domain=D``
        in place of ``tls``; a lone flag is followed by ``;``). Fields are
        %-encoded where needed.
        """
        head = f"{PREFIX}{_escape_user(self.user)}:{MASK}@{self._endpoints_text()}/"
        key = _escape_path(self.routing_key)
        if (self.vhost == DEFAULT_VHOST and not self.tls and not self.persistent
                and self.format is None):
            if self.exchange:
                return f"{head}{_exchange_text(self.exchange)}?{key}"
            return head + key
        params = []
        if self.exchange:
            params.append(f"exchange={_escape_value(self.exchange)}")
        if self.vhost != DEFAULT_VHOST:
            params.append(f"vhost={_escape_value(self.vhost)}")
        if self.tls_domain is not None:
            params.append(f"tls_domain={_escape_value(self.tls_domain)}")
        elif self.tls:
            params.append("tls")
        if self.persistent:
            params.append("persistent")
        if self.format is not None:
            params.append(f"format={self.format}")
        target = ";".join(params)
        if len(params) == 1 and "=" not in target:
            target += ";"  # else a lone flag would read back as an exchange
        return f"{head}{target}?{key}"

    def __repr__(self) -> str:
        return (
            f"RabbitMQSocket(user={self.user!r}, password={MASK!r}, "
            f"host={self.host!r}, port={self.port!r}, "
            f"exchange={self.exchange!r}, routing_key={self.routing_key!r}, "
            f"vhost={self.vhost!r}, tls={self.tls!r}, "
            f"persistent={self.persistent!r}, format={self.format!r}, "
            f"failover={self.failover!r}, tls_domain={self.tls_domain!r})"
        )

    def _endpoints_text(self) -> str:
        if not self.failover:
            return f"{_format_host(self.host)}:{self.port}"
        return ",".join(f"{_format_host(host)}:{port}"
                        for host, port in self.endpoints)


def parse_socket(text: str) -> RabbitMQSocket:
    """Parse socket text: the guide's form or the extended one (module docstring).

    ``rabbitmq:[user[:password]@]host[:port][,host[:port]...]/[target?]routing_key``
    where *target* is an exchange name or ``;``-separated parameters
    (``exchange=``, ``vhost=``, ``format=``, ``tls``, ``tls_domain=``,
    ``persistent``).

    Raises :class:`SocketSyntaxError` naming the part that is wrong (and
    :class:`SocketTypeError` when *text* is not a str).
    """
    if not isinstance(text, str):
        raise SocketTypeError(
            f"a rabbitmq socket must be a str, not {type(text).__name__}"
        )
    if text != text.strip(_ASCII_SPACE):
        _fail(text, "has leading or trailing whitespace; remove it")
    if not text.startswith(PREFIX):
        _fail(text, f"does not start with {PREFIX!r}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        _fail(text, f"has a lone surrogate character at position {err.start}")

    start = len(PREFIX)
    authority, slash, path = text[start:].partition("/")
    if not slash:
        _fail(text, "has no '/' between the host and the routing key")
    userinfo, at, hosts = authority.rpartition("@")
    user, password = _parse_userinfo(text, userinfo, start) if at else (
        DEFAULT_USER, DEFAULT_PASSWORD)
    endpoints = _parse_endpoints(text, hosts, start + len(userinfo) + len(at))
    exchange, routing_key, params = _parse_path(
        text, path, start + len(authority) + 1)
    tls = "tls" in params or "tls_domain" in params
    default_port = DEFAULT_TLS_PORT if tls else DEFAULT_PORT
    endpoints = [(host, default_port if port is None else port)
                 for host, port in endpoints]
    (host, port), failover = endpoints[0], tuple(endpoints[1:])
    fields = (user, password, host, port, exchange, routing_key,
              params.get("vhost", DEFAULT_VHOST), tls, "persistent" in params,
              params.get("format"), failover, params.get("tls_domain"))
    # Checked here too so that a bad field is reported with the socket text.
    _check_fields(fields, _where(text))
    return RabbitMQSocket(*fields)


def _parse_userinfo(text: str, userinfo: str, pos: int) -> tuple[str, str]:
    raw_user, colon, raw_password = userinfo.partition(":")
    if not raw_user:
        _fail(text, "user is empty before '@' (leave out 'user@' for the "
                    f"default {DEFAULT_USER!r})")
    user = _unquote(text, raw_user, "user", pos)
    if not colon:
        return user, DEFAULT_PASSWORD
    return user, _unquote(text, raw_password, "password", pos + len(raw_user) + 1)


def _parse_endpoints(text: str, hosts: str, pos: int) -> list[tuple[str, int | None]]:
    """The ``(host, port or None)`` of each ``,``-separated endpoint."""
    if "," not in hosts:
        return [_parse_hostport(text, hosts, pos, "host")]
    endpoints = []
    for number, hostport in enumerate(hosts.split(","), 1):
        endpoints.append(_parse_hostport(text, hostport, pos, f"host {number}"))
        pos += len(hostport) + 1
    return endpoints


def _parse_hostport(text: str, hostport: str, pos: int,
                    what: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            _fail(text, f"{what} starts with '[' but has no closing ']'")
        raw_host, after = hostport[1:end], hostport[end + 1:]
        if after and not after.startswith(":"):
            _fail(text, f"unexpected text{_echo(text, after)} after the "
                        f"bracketed {what}")
        raw_port = after[1:] if after else None
        host = _unquote(text, raw_host, "host", pos + 1)
    else:
        if hostport.count(":") > 1:
            # OpenSIPS refuses it too; guessing would pick the wrong split.
            _fail(text, f"{what}{_echo(text, hostport)} has more than one ':'; "
                        f"one separates the host from the port (an IPv6 "
                        f"address goes in brackets: [::1]:5672)")
        raw_host, colon, raw_port = hostport.partition(":")
        if not colon:
            raw_port = None
        host = _unquote(text, raw_host, "host", pos)
    if not host:
        _fail(text, f"{what} is empty")
    if raw_port is None:
        return host, None
    port_pos = pos + len(hostport) - len(raw_port)
    return host, _parse_port(text, _unquote(text, raw_port, "port", port_pos))


def _parse_port(text: str, port: str) -> int:
    if not port:
        _fail(text, "port is empty after ':' (leave out ':' for the default "
                    f"{DEFAULT_PORT}, or {DEFAULT_TLS_PORT} with tls)")
    # isdigit() alone accepts other scripts' digits, which int() would take.
    if not (port.isascii() and port.isdigit()):
        _fail(text, f"port{_echo(text, port)} is not a number")
    # Length first: int() of thousands of digits is slow or refused.
    if len(port) > 5 or not 1 <= int(port) <= 65535:
        _fail(text, f"port{_echo(text, port, quote=False)} is not in 1..65535")
    return int(port)


def _parse_path(text: str, path: str, pos: int) -> tuple[str, str, dict]:
    """``(exchange, routing key, the other parameters by name)``."""
    raw_target, question, raw_key = path.partition("?")
    if not question:
        raw_target, raw_key = "", path
    # A lone flag is OpenSIPS 3.2's way to write it (persistent?key).
    if "=" in raw_target or ";" in raw_target or raw_target in _FLAGS:
        params = _parse_params(text, raw_target, pos)
        exchange = params.pop("exchange", DEFAULT_EXCHANGE)
    else:
        params = {}
        exchange = _unquote(text, raw_target, "exchange", pos)
    key_pos = pos + len(raw_target) + len(question)
    routing_key = _unquote(text, raw_key, "routing key", key_pos)
    if not routing_key and not exchange:
        _fail(text, "routing key is empty; it may be empty only after an "
                    "exchange (as in rabbitmq:host/amq.fanout?)")
    return exchange, routing_key, params


def _parse_params(text: str, target: str, pos: int) -> dict:
    """The ``;``-separated parameters of *target*: name -> value (True for flags)."""
    params = {}
    for raw in target.split(";"):
        here, pos = pos, pos + len(raw) + 1
        if not raw:
            continue
        raw_name, equals, raw_value = raw.partition("=")
        name = _unquote(text, raw_name, "a parameter name", here)
        if not name:
            _fail(text, f"a parameter name is empty (before '=' at position "
                        f"{here})")
        if name not in _VALUED and name not in _FLAGS:
            _fail(text, f"unknown parameter{_echo(text, name)} at position "
                        f"{here}; the parameters are {_PARAMS}")
        if name in params:
            _fail(text, f"parameter {name!r} is given twice")
        if name in _FLAGS:
            if equals:
                _fail(text, f"parameter {name!r} takes no value; write just "
                            f"'{name}'")
            params[name] = True
            continue
        if not equals:
            _fail(text, f"parameter {name!r} needs a value: '{name}=...'")
        value = _unquote(text, raw_value, name, here + len(raw_name) + 1)
        if not value:
            default = (f"; leave it out for the default exchange "
                       f"{DEFAULT_EXCHANGE!r}" if name == "exchange" else "")
            _fail(text, f"{name}= is empty{default}")
        if name == "format" and value not in FORMATS:
            _fail(text, f"format{_echo(text, value)} is not one of {_FORMAT_NAMES}")
        params[name] = value
    return params


def _unquote(text: str, raw: str, name: str, pos: int) -> str:
    """Strictly %-decode the field *name* that starts at *pos* in *text*."""
    control = _CONTROL.search(raw)
    if control:
        _fail(text, f"{name} has a control character (U+{ord(control.group()):04X}) "
                    f"at position {pos + control.start()}")
    if "%" not in raw:
        return raw
    bad = _BAD_ESCAPE.search(raw) or _UNPRINTABLE_ESCAPE.search(raw)
    if bad:
        # Even two characters of a password are too many to echo.
        escape = raw[bad.start():bad.start() + 3]
        shown = "" if name == "password" else _echo(text, escape)
        if bad.re is _BAD_ESCAPE:
            _fail(text, f"{name} has a bad %-escape{shown} at position "
                        f"{pos + bad.start()}: '%' must be followed by two hex digits")
        _fail(text, f"{name} has a %-escape{shown} at position {pos + bad.start()} "
                    f"that is not printable ASCII: only %20..%7E are decoded (as in "
                    f"OpenSIPS); write other characters as they are")
    # Every escape is printable ASCII now, so the result is exact.
    return unquote(raw)


def _as_failover(failover) -> tuple:
    """*failover* as a tuple of tuples, or raise naming what is wrong."""
    if isinstance(failover, (str, bytes)) or not isinstance(
            failover, (tuple, list)):
        raise SocketTypeError(
            f"RabbitMQSocket: failover must be a tuple of (host, port) pairs, "
            f"not {type(failover).__name__}")
    pairs = []
    for number, pair in enumerate(failover, 2):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise SocketTypeError(
                f"RabbitMQSocket: failover host {number} must be a (host, port) "
                f"pair, not {type(pair).__name__} {pair!r}")
        pairs.append(tuple(pair))
    return tuple(pairs)


def _check_fields(values: tuple, where: str) -> None:
    """Raise unless every field has the right type and range.

    Shared by the constructor (direct use, ``RabbitMQSocket(*astuple(s))``)
    and :func:`parse_socket`; *where* starts the error message.
    """
    (user, password, host, port, exchange, routing_key, vhost, tls,
     persistent, format, failover, tls_domain) = values
    texts = (("user", user), ("password", password), ("host", host),
             ("exchange", exchange), ("routing key", routing_key),
             ("vhost", vhost))
    _check_types(texts, port, tls, persistent, format, tls_domain, where)
    if tls_domain is not None:
        if not tls:
            raise SocketSyntaxError(f"{where}: tls_domain {tls_domain!r} needs tls=True")
        texts += (("tls_domain", tls_domain),)
    for name, value in texts:
        if not value and (name in ("user", "host", "vhost", "tls_domain")
                          or (name == "routing key" and not exchange)):
            raise SocketSyntaxError(f"{where}: {name} is empty")
        _check_text(value, name, where)
    if not 1 <= port <= 65535:
        raise SocketSyntaxError(f"{where}: port {port} is not in 1..65535")
    if failover:
        _check_failover(failover, (host, port), where)


def _check_types(texts, port, tls, persistent, format, tls_domain, where: str) -> None:
    for name, value in texts + (("tls_domain", "" if tls_domain is None else tls_domain),):
        if not isinstance(value, str):
            raise SocketTypeError(
                f"{where}: {name} must be a str, not {type(value).__name__}")
    if type(port) is not int:  # bool is an int, but never a port
        raise SocketTypeError(
            f"{where}: port must be an int, not {type(port).__name__}")
    for name, value in (("tls", tls), ("persistent", persistent)):
        if type(value) is not bool:
            raise SocketTypeError(
                f"{where}: {name} must be a bool, not {type(value).__name__}")
    if format is not None and format not in FORMATS:
        if not isinstance(format, str):
            raise SocketTypeError(f"{where}: format must be one of {_FORMAT_NAMES} "
                                  f"or None, not {type(format).__name__}")
        raise SocketSyntaxError(
            f"{where}: format {format!r} is not one of {_FORMAT_NAMES} or None")


def _check_text(value: str, name: str, where: str) -> None:
    """Refuse a control character, a lone surrogate, or an AMQP name over 255 bytes."""
    control = _CONTROL.search(value)
    if control:
        raise SocketSyntaxError(
            f"{where}: {name} has a control character (U+{ord(control.group()):04X}) "
            f"at position {control.start()}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise SocketSyntaxError(
            f"{where}: {name} has a lone surrogate character") from None
    if size > _MAX_SHORTSTR and name in ("exchange", "routing key", "vhost"):
        raise SocketSyntaxError(
            f"{where}: {name} is {size} bytes; AMQP allows at most "
            f"{_MAX_SHORTSTR}")


def _check_failover(failover: tuple, primary: tuple[str, int], where: str) -> None:
    seen = {primary}
    for number, (host, port) in enumerate(failover, 2):
        what = f"{where}: host {number}"
        if not isinstance(host, str):
            raise SocketTypeError(f"{what} must be a str, not {type(host).__name__}")
        if type(port) is not int:
            raise SocketTypeError(
                f"{what}: port must be an int, not {type(port).__name__}")
        if not host:
            raise SocketSyntaxError(f"{what} is empty")
        _check_text(host, f"host {number}", where)
        if not 1 <= port <= 65535:
            raise SocketSyntaxError(f"{what}: port {port} is not in 1..65535")
        if (host, port) in seen:
            raise SocketSyntaxError(
                f"{where}: {_format_host(host)}:{port} is listed twice; each "
                f"host:port may appear once")
        seen.add((host, port))


def _fail(text: str, problem: str):
    raise SocketSyntaxError(f"{_where(text)}: {problem}")


def _echo(text: str, fragment: str, quote: bool = True) -> str:
    """`` 'fragment'`` for a message, or nothing if redaction hid it.

    A password with a raw '/' ends the authority early, and its pieces are
    then parsed as host and port; this keeps them out of the message.
    """
    if fragment not in redact(text):
        return ""
    return f" {fragment!r}" if quote else f" {fragment}"


def _where(text: str) -> str:
    shown = redact(text)
    if len(shown) > _MAX_QUOTED:
        shown = shown[:_MAX_QUOTED] + "..."
    return f"rabbitmq socket {shown!r}"


def redact(text: str) -> str:
    """*text* with the password replaced by ``***``, for messages and logs.

    Best effort on malformed text: if the authority has no ``@`` but the text
    does, the password may hold a raw ``/``, so everything from the first
    ``:`` to the last ``@`` is hidden (hiding too much beats leaking).
    """
    head = PREFIX if text.startswith(PREFIX) else ""
    rest = text[len(head):]
    at = rest.partition("/")[0].rfind("@")
    if at < 0:
        at = rest.rfind("@")
    colon = rest.find(":", 0, max(at, 0))
    if colon < 0:
        return text
    return f"{head}{rest[:colon + 1]}{MASK}{rest[at:]}"


def _escaper(specials: str):
    """A function that %-encodes *specials* and spaces.

    Only printable ASCII is ever escaped (the parser decodes nothing else),
    and fields hold no control characters: every other character is
    written as it is.
    """
    pattern = re.compile(f"[{re.escape(specials)} ]")

    def percent(match: re.Match) -> str:
        return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))

    return lambda value: pattern.sub(percent, value)


# Each field escapes '%' plus the characters that would end it early.
_escape_user = _escaper("%:@/")
_escape_host = _escaper("%:@/[],")
_escape_bracketed_host = _escaper("%@/[],")
_escape_path = _escaper("%?")                # the routing key
_escape_exchange = _escaper("%?=;")          # else it would read as parameters
_escape_value = _escaper("%?;")              # a parameter's value
_escape_vhost = _escaper("%/")               # in broker_label, as in an AMQP URI


def _exchange_text(exchange: str) -> str:
    """An exchange name for the guide's form; one spelled like a flag gets its first letter escaped."""
    text = _escape_exchange(exchange)
    if text in _FLAGS:
        return f"%{ord(text[0]):02X}{text[1:]}"
    return text


def _format_host(host: str) -> str:
    if ":" in host:
        return f"[{_escape_bracketed_host(host)}]"
    return _escape_host(host)
