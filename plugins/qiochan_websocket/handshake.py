"""The upgrade policy: what our server accepts, what our client sends, how failures read.

The HTTP parsing, the ``Sec-WebSocket-Accept`` computation and the header
checks are the ``websockets`` Sans-I/O objects' (:class:`ServerProtocol`,
:class:`ClientProtocol`); this module adds QEMU's websocket server rules on
top: the request must be HTTP/1.1 with a ``Host`` header, for the configured
path (``/`` by default, 404 otherwise), and a client that offers subprotocols
must offer ``binary`` (QEMU's VNC websocket speaks only that).  Every refusal
is a 4xx with a short plain-text body: 400 for a malformed upgrade, 403 for a
refused origin, 404 for a wrong path, 408 for a request that took too long,
431 for one that is too large.
"""

from __future__ import annotations

import http
import logging
import re
from collections.abc import Callable, Sequence

from websockets.client import ClientProtocol
from websockets.exceptions import (
    HeaderLineTooLong,
    InvalidMessage,
    InvalidStatus,
    NegotiationError,
    RequestLineTooLong,
    TooManyHeaders,
)
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI

__all__ = [
    "BINARY",
    "Origins",
    "Route",
    "answer_request",
    "client_failure",
    "make_client",
    "make_server",
    "refusal",
    "server_failure",
    "unparsable_request_status",
]

#: the protocol objects' own log (frames at DEBUG, "connection open" at INFO)
protocol_log = logging.getLogger("qiochan.websocket.protocol")

#: The subprotocol QEMU's websocket server requires when subprotocols are offered.
BINARY = Subprotocol("binary")

#: An allow-list of ``Origin`` values: exact strings, compiled patterns, or None
#: meaning "a request without an Origin header is acceptable".
Origins = Sequence[str | re.Pattern[str] | None]

#: Decides on a request target (path and query, e.g. ``/vm1?x=1``): True admits
#: the upgrade, False refuses it with 404.  A server given one checks no fixed path.
Route = Callable[[str], bool]

# websockets' own status for these failures, turned into QEMU's 400
_AS_BAD_REQUEST = frozenset(
    {
        http.HTTPStatus.METHOD_NOT_ALLOWED,
        http.HTTPStatus.UPGRADE_REQUIRED,
        http.HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
    }
)
_BODY_PREFIX = "Failed to open a WebSocket connection: "


def _select_binary(_protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    """QEMU's rule: no subprotocol offered is fine; offered ones must include ``binary``."""
    if not offered:
        return None
    if BINARY in offered:
        return BINARY
    raise NegotiationError(
        f"the client offered subprotocols {', '.join(offered)} but not '{BINARY}'"
    )


def make_server(origins: Origins | None, max_size: int | None) -> ServerProtocol:
    """Return a server protocol object with our subprotocol rule and ``origins`` allow-list."""
    allowed: list[Origin | re.Pattern[str] | None] | None = None
    if origins is not None:
        allowed = [Origin(o) if isinstance(o, str) else o for o in origins]
    return ServerProtocol(
        origins=allowed,
        subprotocols=[BINARY],
        select_subprotocol=_select_binary,
        max_size=max_size,
        logger=protocol_log,
    )


def make_client(
    host: str,
    path: str,
    *,
    origin: str | None,
    subprotocols: Sequence[str],
    max_size: int | None,
    secure: bool = False,
) -> ClientProtocol:
    """Return a client protocol object for ``path`` on ``host`` (the ``Host`` header value)."""
    resource, _sep, query = path.partition("?")
    uri = WebSocketURI(
        secure=secure, host=host, port=443 if secure else 80, path=resource, query=query
    )
    return ClientProtocol(
        uri,
        origin=None if origin is None else Origin(origin),
        subprotocols=[Subprotocol(s) for s in subprotocols] or None,
        max_size=max_size,
        logger=protocol_log,
    )


def client_request(protocol: ClientProtocol, host: str) -> Request:
    """Return the upgrade request, with ``Host`` exactly as given."""
    request = protocol.connect()
    del request.headers["Host"]
    request.headers["Host"] = host
    return request


def refusal(protocol: ServerProtocol, status: int, why: str) -> Response:
    """Return a refusal with ``status`` and a one-line plain-text body saying ``why``."""
    response = protocol.reject(status, f"{_BODY_PREFIX}{why}.\n")
    if "Sec-WebSocket-Version" in why:
        # RFC 6455 4.4: tell the client which version we speak
        response.headers["Sec-WebSocket-Version"] = "13"
    return response


def _request_path(target: str) -> str:
    return target.partition("?")[0]


def _path_admitted(target: str, path: str | Route) -> bool:
    if isinstance(path, str):
        return _request_path(target) == path
    return bool(path(target))


def answer_request(
    protocol: ServerProtocol, request: Request, path: str | Route
) -> tuple[Response, str]:
    """Decide on an upgrade request for ``path``, or for the targets ``path(target)`` admits.

    Returns:
        ``(response, why)``: a 101 response and ``""``, or a 4xx refusal and
        the reason (also in its body).
    """
    if request.protocol != "HTTP/1.1":
        why = f"unsupported HTTP version {request.protocol}; HTTP/1.1 is required"
        return refusal(protocol, http.HTTPStatus.BAD_REQUEST, why), why
    try:
        host = request.headers.get("Host")
    except LookupError:  # several Host headers
        host = None
        why = "more than one Host header"
    else:
        why = "missing Host header"
    if not host:
        return refusal(protocol, http.HTTPStatus.BAD_REQUEST, why), why
    if not _path_admitted(request.path, path):
        why = f"no websocket at path {_request_path(request.path)!r}"
        return refusal(protocol, http.HTTPStatus.NOT_FOUND, why), why
    response = protocol.accept(request)
    if response.status_code == http.HTTPStatus.SWITCHING_PROTOCOLS:
        return response, ""
    why = server_failure(protocol)
    status = response.status_code
    if status in _AS_BAD_REQUEST:
        status = http.HTTPStatus.BAD_REQUEST
    return refusal(protocol, status, why), why


def unparsable_request_status(protocol: ServerProtocol, client_left: bool) -> int | None:
    """The status for a request websockets could not parse; None when the client left.

    Args:
        client_left: the transport reached EOF.  (websockets also reports a
            line ending in a bare LF as an EOFError: that is a malformed
            request, answered 400, not a client that left.)
    """
    exc = protocol.handshake_exc
    if isinstance(exc, RequestLineTooLong):
        return http.HTTPStatus.REQUEST_URI_TOO_LONG
    if isinstance(exc, (HeaderLineTooLong, TooManyHeaders)):
        return http.HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    if exc is None or (client_left and isinstance(exc.__cause__, EOFError)):
        return None
    return http.HTTPStatus.BAD_REQUEST


def server_failure(protocol: ServerProtocol, client_left: bool = False) -> str:
    """Describe why the server side of the handshake failed (from the protocol's error)."""
    exc = protocol.handshake_exc
    if exc is None:
        return "the upgrade request was refused"
    text = str(exc)
    cause = exc.__cause__
    if isinstance(exc, InvalidMessage) and cause is not None:
        if client_left and isinstance(cause, EOFError):
            return f"the client closed the connection before completing its request ({cause})"
        # a bare LF shows as EOFError("... while reading ...") caused by "line without CRLF"
        root = cause.__cause__ if isinstance(cause, EOFError) and cause.__cause__ else cause
        text = f"invalid HTTP request: {root}"
    elif cause is not None and str(cause):
        text = f"{text} ({cause})"
    return text


def _status_line(response: Response) -> str:
    return f"HTTP/1.1 {response.status_code} {response.reason_phrase}"


def _body_summary(response: Response) -> str:
    body = bytes(response.body[:200]).decode("utf-8", "replace").strip()
    first = body.splitlines()[0] if body else ""
    return f": {first}" if first else ""


def client_failure(
    protocol: ClientProtocol, response: Response | None, head: bytes | bytearray
) -> str:
    """Describe why the client side of the handshake failed, with the status line if any.

    Args:
        head: the first bytes the server sent, for a status line websockets
            could not parse into a response (QEMU's 4xx answers end without
            the blank line, then the connection closes).
    """
    exc = protocol.handshake_exc
    if isinstance(exc, InvalidStatus):
        return f"server answered {_status_line(exc.response)}{_body_summary(exc.response)}"
    if isinstance(exc, InvalidMessage):
        cause = exc.__cause__
        first = bytes(head).split(b"\r\n", 1)[0].decode("latin-1").strip()[:120]
        if isinstance(cause, EOFError):
            if first:
                return f"server answered {first} and closed the connection"
            return "the server closed the connection before answering the upgrade"
        return f"invalid HTTP response from the server: {cause or exc}"
    detail = str(exc) if exc is not None else "the upgrade was not accepted"
    if response is not None:
        return f"server answered {_status_line(response)} but {detail}"
    return detail
