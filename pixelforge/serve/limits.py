"""What the server lets clients hold: connections, event streams, idle time, and the host names it answers to.

Connections are bounded where they are made (uvicorn's h11 protocol, extended below), since a socket
that never sends a request never reaches the app; event streams are counted by the app itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from dataclasses import dataclass, fields
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LINGER_S = 1.0  # a refused connection keeps reading (and dropping) its request this long, so the answer arrives


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what clients may hold. A client is one IP address (behind a proxy: the proxy's).

    max_connections: open connections in all; one more is answered 503 and closed.
    max_connections_per_client: open connections of one client; one more is answered 429 and closed.
    max_streams: open event streams (GET /jobs/{id}/events) in all; one more gets 429.
    max_streams_per_client: open event streams of one client; one more gets 429.
    stream_max_s: an event stream's lifetime; it then ends and the client reconnects or polls.
    idle_timeout_s: the longest a client may stay silent: before its first request, between
        requests, and while sending a request's headers or its body (a connection is closed, a
        body sent too slowly gets 408).
    max_upload_bytes: an image sent with a job (sketch, image, mask), once decoded from its base64; the
        default's base64 fits the server's 1 MB body limit.
    max_upload_pixels: such an image's width x height, read from its header before it is decoded
        (default 2048 x 2048).
    """

    max_connections: int = 256
    max_connections_per_client: int = 32
    max_streams: int = 64
    max_streams_per_client: int = 8
    stream_max_s: float = 600.0
    idle_timeout_s: float = 10.0
    max_upload_bytes: int = 700_000
    max_upload_pixels: int = 2048 * 2048

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1 or value == float("inf"):
                raise ValueError(f"{_named(f.name)} must be a finite number of at least 1, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ValueError(f"{_named(f.name)} must be a whole number, got {value!r}")
        for each, total in (("max_connections_per_client", "max_connections"), ("max_streams_per_client", "max_streams")):
            if getattr(self, each) > getattr(self, total):
                raise ValueError(f"{_named(each)} ({getattr(self, each)}) must not exceed {_named(total)} ({getattr(self, total)})")


def _named(field: str) -> str:
    """A limit's field with its `pixelforge serve` option: 'idle_timeout_s (--idle-timeout)'."""
    return f"server limit {field} (--{field.removesuffix('_s').replace('_', '-')})"


# --- host names ------------------------------------------------------------------------------------
def host_names(bound: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The Host names a server bound to `bound` answers to: loopback names, the bound address (or, bound
    to every interface, this machine's name), and `extra`; "*" among them accepts any host."""
    names = list(LOOPBACK_NAMES)
    if bound in ("0.0.0.0", "::", ""):
        names.append(socket.gethostname())
    else:
        names.append(bound)
    for name in extra:
        name = name.strip().lower()
        if name.startswith("[") and name.endswith("]"):
            name = name[1:-1]
        if name != "*" and (not name or any(c in name for c in "/ *@") or _split_port(name) != name):
            raise ValueError(f"--allowed-host takes a host name or address without a port or wildcard (or '*': any), got {name!r}")
        names.append(name)
    return list(dict.fromkeys(n.lower().strip("[]") for n in names))


def _split_port(host: str) -> str:
    """A Host header's name without its port: 'a:80' -> 'a', '[::1]:80' -> '::1', '::1' -> '::1'."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        return name
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return host
    return host


class HostAllowList:
    """ASGI middleware: a request whose Host names none of `hosts` gets 400, so a web page served from
    another name that resolves here (DNS rebinding) cannot drive the API."""

    def __init__(self, app, hosts: list[str]):
        self.app, self.hosts = app, {h.lower() for h in hosts}
        self.any = "*" in self.hosts

    async def __call__(self, scope, receive, send):
        if self.any or scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").strip().lower()
        if _split_port(raw) in self.hosts:
            return await self.app(scope, receive, send)
        shown = raw.encode("ascii", "backslashreplace").decode()
        detail = (f"this server does not answer to host {shown!r}; it answers to {', '.join(sorted(self.hosts))} "
                  "(start it with --allowed-host NAME to add one)")
        await send_json(send, 400, {"detail": detail})


async def send_json(send, status: int, content: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A whole JSON answer through an ASGI `send`."""
    body = json.dumps(content, ensure_ascii=True).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


# --- page hardening --------------------------------------------------------------------------------
# the page loads its script, style and icon from /static and draws images from blob: URLs
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# FastAPI's interactive docs: a script and style from its CDN, and an inline script starting them
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' https://cdn.jsdelivr.net; img-src 'self' data: https://fastapi.tiangolo.com; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class SecurityHeaders:
    """ASGI middleware: every answer says not to sniff types, frame or send referrers, and carries a CSP."""

    def __init__(self, app, docs_paths: tuple[str, ...] = ()):
        self.app, self.docs_paths = app, docs_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = DOCS_CSP if scope["path"] in self.docs_paths else PAGE_CSP
        extra = [(b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
                 (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


# --- connections -----------------------------------------------------------------------------------
def _refusal(status: int, detail: str) -> bytes:
    body = json.dumps({"detail": detail}).encode()
    reason = {429: "Too Many Requests", 503: "Service Unavailable"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"retry-after: 1\r\nconnection: close\r\n\r\n").encode() + body


def guarded_protocol(limits: ServerLimits) -> type:
    """uvicorn's h11 protocol, bounded: connections over `limits` are answered (503 or 429) and closed at
    once, and a connection that sends no complete request head within idle_timeout_s (after connecting or
    after its previous answer) is closed. uvicorn itself times out only idle keep-alive connections: one
    that never sends a request, or sends its head a byte at a time, would be held for ever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ip = self.client[0] if self.client else None
            live = [c for c in self.connections if not getattr(c, "_refused", False)]
            if len(live) > limits.max_connections:
                self._refuse(503, f"the server holds its limit of {limits.max_connections} connections; retry shortly")
            elif ip is not None and sum(1 for c in live if c.client and c.client[0] == ip) > limits.max_connections_per_client:
                self._refuse(429, f"this client holds its limit of {limits.max_connections_per_client} connections")
            else:
                self._arm_head_timer()

        def _refuse(self, status: int, detail: str) -> None:
            # answer, half-close, and drop what the client sends for a moment: closing with its request
            # unread would reset the connection before the answer is read
            self._refused = True
            self.transport.write(_refusal(status, detail))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.abort)

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_timer = self.loop.call_later(limits.idle_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            self._disarm_if_request_started()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_head_timer()
                self._disarm_if_request_started()  # a pipelined request may have started already

        def _disarm_if_request_started(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self._disarm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


def uvicorn_options(limits: ServerLimits) -> dict[str, Any]:
    """Keyword arguments for uvicorn.run / uvicorn.Config that apply `limits`."""
    return {
        "http": guarded_protocol(limits),
        "timeout_keep_alive": limits.idle_timeout_s,
        # requests in flight (each connection holds at most one), so this bounds tasks left by closed ones too
        "limit_concurrency": limits.max_connections + 1,
    }
