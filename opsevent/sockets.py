"""RabbitMQ subscriber sockets: parse, print and compare them.

Grammar (admin guide 1.3; the guide's unclosed ``[`` is closed here)::

    socket      = "rabbitmq:" [ user [ ":" password ] "@" ] host [ ":" port ] "/"
                  [ exchange "?" ] routing-key
    host        = name / "[" ipv6-address "]"
    port        = 1*DIGIT                        ; 1..65535

Examples (guide 1.4; both are the same subscriber)::

    rabbitmq:guest:guest@127.0.0.1:5672/pike
    rabbitmq:127.0.0.1/pike

How the text is split, in this order. The rules let every field hold any
character, once the awkward ones are %-encoded:

1. The text must start with ``rabbitmq:``. Leading or trailing whitespace
   is an error, not something to guess about.
2. The authority is everything up to the first ``/``; the rest is the path.
3. The userinfo is the authority up to its *last* ``@``. It splits into user
   and password at its *first* ``:``. A user without a password gets the
   default password.
4. Host and port split at the *last* ``:``. A host in brackets may itself
   contain ``:`` (IPv6, ``[::1]:5672``).
5. The path splits at its *first* ``?`` into exchange and routing key; with
   no ``?`` the whole path is the routing key.
6. Every field is then %-decoded strictly: ``%`` must be followed by two hex
   digits, and the decoded bytes must be UTF-8. So a password may contain
   ``@`` ``:`` ``/`` written as ``%40`` ``%3A`` ``%2F``.

Defaults: user and password ``guest``, port 5672, exchange ``''``. The vhost
is always ``/``, the only one the module supports (guide FAQ 2.3 and 2.4).
"""

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from .errors import SocketSyntaxError, SocketTypeError

__all__ = [
    "DEFAULT_USER",
    "DEFAULT_PASSWORD",
    "DEFAULT_PORT",
    "DEFAULT_EXCHANGE",
    "DEFAULT_VHOST",
    "RabbitMQSocket",
    "parse_socket",
    "redact",
]

DEFAULT_USER = "guest"
DEFAULT_PASSWORD = "guest"
DEFAULT_PORT = 5672
DEFAULT_EXCHANGE = ""
DEFAULT_VHOST = "/"

PREFIX = "rabbitmq:"
MASK = "***"
# AMQP carries exchange names and routing keys as short strings.
_MAX_SHORTSTR = 255
# Long socket text is cut in messages so one bad input cannot flood a log.
_MAX_QUOTED = 200

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


@dataclass(frozen=True, repr=False)
class RabbitMQSocket:
    """Where to publish one subscriber's events.

    Two sockets that differ only in password are the same subscriber: they
    compare equal and hash alike, so a later subscription can replace the
    password of an earlier one. ``repr``, ``str`` and error messages show
    the password as ``***``.
    """

    user: str
    password: str = field(compare=False, repr=False)
    host: str
    port: int
    exchange: str
    routing_key: str
    vhost: str = DEFAULT_VHOST

    def __post_init__(self) -> None:
        _check_fields((self.user, self.password, self.host, self.port,
                       self.exchange, self.routing_key, self.vhost),
                      "RabbitMQSocket")

    @property
    def broker(self) -> tuple[str, int, str, str, str]:
        """``(host, port, user, password, vhost)``: one connection's identity.

        Secret-bearing: it holds the password. Use it as a key, never log it;
        log :attr:`broker_label` instead.
        """
        return (self.host, self.port, self.user, self.password, self.vhost)

    @property
    def broker_label(self) -> str:
        """``user@host:port/vhost`` without the password, safe for logs.

        The vhost is %-encoded as in an AMQP URI, so ``/`` shows as ``%2F``.
        """
        return (
            f"{_escape_user(self.user)}@{_format_host(self.host)}:{self.port}"
            f"/{_escape_vhost(self.vhost)}"
        )

    def __str__(self) -> str:
        """``rabbitmq:USER:***@HOST:PORT/[EXCHANGE?]ROUTING_KEY``.

        Fields are %-encoded where needed, so the text parses back to an
        equal socket (with the password ``***``). The vhost has no place in
        the grammar and is not shown.
        """
        exchange = f"{_escape_path(self.exchange)}?" if self.exchange else ""
        return (
            f"{PREFIX}{_escape_user(self.user)}:{MASK}@"
            f"{_format_host(self.host)}:{self.port}/"
            f"{exchange}{_escape_path(self.routing_key)}"
        )

    def __repr__(self) -> str:
        return (
            f"RabbitMQSocket(user={self.user!r}, password={MASK!r}, "
            f"host={self.host!r}, port={self.port!r}, "
            f"exchange={self.exchange!r}, routing_key={self.routing_key!r}, "
            f"vhost={self.vhost!r})"
        )


def parse_socket(text: str) -> RabbitMQSocket:
    """Parse ``rabbitmq:[user[:password]@]host[:port]/[exchange?]routing_key``.

    Raises :class:`SocketSyntaxError` naming the part that is wrong (and
    :class:`SocketTypeError` when *text* is not a str).
    """
    if not isinstance(text, str):
        raise SocketTypeError(
            f"a rabbitmq socket must be a str, not {type(text).__name__}"
        )
    if text != text.strip():
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
    userinfo, at, hostport = authority.rpartition("@")
    user, password = _parse_userinfo(text, userinfo, start) if at else (
        DEFAULT_USER, DEFAULT_PASSWORD)
    host, port = _parse_hostport(text, hostport, start + len(userinfo) + len(at))
    exchange, routing_key = _parse_path(text, path, start + len(authority) + 1)
    fields = (user, password, host, port, exchange, routing_key, DEFAULT_VHOST)
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


def _parse_hostport(text: str, hostport: str, pos: int) -> tuple[str, int]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            _fail(text, "host starts with '[' but has no closing ']'")
        raw_host, after = hostport[1:end], hostport[end + 1:]
        if after and not after.startswith(":"):
            _fail(text, f"unexpected text{_echo(text, after)} after the "
                        "bracketed host")
        raw_port = after[1:] if after else None
        host = _unquote(text, raw_host, "host", pos + 1)
    else:
        raw_host, colon, raw_port = hostport.rpartition(":")
        if not colon:
            raw_host, raw_port = hostport, None
        host = _unquote(text, raw_host, "host", pos)
    if not host:
        _fail(text, "host is empty")
    if raw_port is None:
        return host, DEFAULT_PORT
    port_pos = pos + len(hostport) - len(raw_port)
    return host, _parse_port(text, _unquote(text, raw_port, "port", port_pos))


def _parse_port(text: str, port: str) -> int:
    if not port:
        _fail(text, "port is empty after ':' (leave out ':' for the default "
                    f"{DEFAULT_PORT})")
    # isdigit() alone accepts other scripts' digits, which int() would take.
    if not (port.isascii() and port.isdigit()):
        _fail(text, f"port{_echo(text, port)} is not a number")
    # Length first: int() of thousands of digits is slow or refused.
    if len(port) > 5 or not 1 <= int(port) <= 65535:
        _fail(text, f"port{_echo(text, port, quote=False)} is not in 1..65535")
    return int(port)


def _parse_path(text: str, path: str, pos: int) -> tuple[str, str]:
    raw_exchange, question, raw_key = path.partition("?")
    if not question:
        raw_exchange, raw_key = "", path
    exchange = _unquote(text, raw_exchange, "exchange", pos)
    key_pos = pos + len(raw_exchange) + len(question)
    routing_key = _unquote(text, raw_key, "routing key", key_pos)
    if not routing_key:
        _fail(text, "routing key is empty")
    return exchange, routing_key


def _unquote(text: str, raw: str, name: str, pos: int) -> str:
    """Strictly %-decode the field *name* that starts at *pos* in *text*."""
    if "%" not in raw:
        return raw
    bad = _BAD_ESCAPE.search(raw)
    if bad:
        # Even two characters of a password are too many to echo.
        escape = raw[bad.start():bad.start() + 3]
        shown = "" if name == "password" else _echo(text, escape)
        _fail(text, f"{name} has a bad %-escape{shown} at position "
                    f"{pos + bad.start()}: '%' must be followed by two hex digits")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as err:
        at = pos + _raw_offset(raw, err.start)
        _fail(text, f"{name} is not valid UTF-8 after %-decoding "
                    f"(at position {at})")


def _raw_offset(raw: str, byte_index: int) -> int:
    """Where in *raw* the decoded byte *byte_index* came from (error path only)."""
    count = index = 0
    while index < len(raw) and count < byte_index:
        if raw[index] == "%":
            count, index = count + 1, index + 3
        else:
            count, index = count + len(raw[index].encode("utf-8")), index + 1
    return index


def _check_fields(values: tuple, where: str) -> None:
    """Raise unless every field has the right type and range.

    Shared by the constructor (direct use, ``RabbitMQSocket(*astuple(s))``)
    and :func:`parse_socket`; *where* starts the error message.
    """
    user, password, host, port, exchange, routing_key, vhost = values
    texts = (("user", user), ("password", password), ("host", host),
             ("exchange", exchange), ("routing key", routing_key),
             ("vhost", vhost))
    for name, value in texts:
        if not isinstance(value, str):
            raise SocketTypeError(
                f"{where}: {name} must be a str, not {type(value).__name__}")
    if type(port) is not int:  # bool is an int, but never a port
        raise SocketTypeError(
            f"{where}: port must be an int, not {type(port).__name__}")
    for name, value in texts:
        if not value and name in ("user", "host", "routing key", "vhost"):
            raise SocketSyntaxError(f"{where}: {name} is empty")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise SocketSyntaxError(
                f"{where}: {name} has a lone surrogate character") from None
        if size > _MAX_SHORTSTR and name in ("exchange", "routing key"):
            raise SocketSyntaxError(
                f"{where}: {name} is {size} bytes; AMQP allows at most "
                f"{_MAX_SHORTSTR}")
    if not 1 <= port <= 65535:
        raise SocketSyntaxError(f"{where}: port {port} is not in 1..65535")


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
    """A function that %-encodes *specials*, whitespace and control characters."""
    pattern = re.compile(f"[{re.escape(specials)}\\s\\x00-\\x1f\\x7f]")

    def percent(match: re.Match) -> str:
        return "".join(f"%{byte:02X}" for byte in match.group().encode("utf-8"))

    return lambda value: pattern.sub(percent, value)


# Each field escapes '%' plus the characters that would end it early.
_escape_user = _escaper("%:@/")
_escape_host = _escaper("%:@/[]")
_escape_bracketed_host = _escaper("%@/[]")
_escape_path = _escaper("%?")
_escape_vhost = _escaper("%/")


def _format_host(host: str) -> str:
    if ":" in host:
        return f"[{_escape_bracketed_host(host)}]"
    return _escape_host(host)
