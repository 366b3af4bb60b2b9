"""Who may talk to the server: the Host and Origin rules that keep other web pages out.

A server on 127.0.0.1 is reachable from every page the user's browser opens. Two rules stop
those pages from driving it (and JSON endpoints refuse non-JSON bodies, see app.py):

* **Host** (DNS rebinding): a page on evil.example can re-point its own name at 127.0.0.1 and
  then read our answers as same-origin; its requests still carry `Host: evil.example`. Allowed
  Hosts: localhost (and *.localhost), any IP literal (127.0.0.1, [::1], a LAN address: a
  rebinding attack always uses a domain name), the bound address, and `allowed_hosts`
  ("*" allows any).
* **Origin** (cross-site requests): a browser names the page that sends a request; a request
  with an Origin is served only when that origin is this server itself (same host and port as
  its Host header) or is listed in `allowed_origins` ("*" allows any). Requests without Origin
  (curl, the openai client, scripts) are not affected.

Refusals are 403s with an OpenAI-style error body and are counted in /metrics.
"""

from __future__ import annotations

import ipaddress
import json
from urllib.parse import urlsplit

LOCAL_NAMES = ("localhost",)


def split_host(value: str) -> tuple[str, str]:
    """'Host' header value -> (host lowercased, without brackets; port or '')."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6]:port
        host, _, rest = value[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else ""
    if value.count(":") == 1:
        host, _, port = value.partition(":")
        return host, port
    return value, ""


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def normalize_origin(origin: str) -> str:
    """'HTTP://Example.com:80/' -> 'http://example.com' (scheme://host[:port], default port dropped)."""
    u = urlsplit(origin.strip())
    host = (u.hostname or "").lower()
    port = u.port
    default = {"http": 80, "https": 443}.get(u.scheme)
    shown = f"[{host}]" if ":" in host else host
    return f"{u.scheme}://{shown}" + (f":{port}" if port and port != default else "")


DRAIN_BYTES = 1 << 20  # a refused request's body is read up to this, so the 403 is not lost to a
DRAIN_S = 2.0  # reset (closing with unread bytes makes the kernel send RST), for at most this long


async def _drain(receive) -> None:
    import asyncio

    n = 0
    try:
        async with asyncio.timeout(DRAIN_S):
            while n <= DRAIN_BYTES:
                msg = await receive()
                n += len(msg.get("body", b""))
                if msg["type"] != "http.request" or not msg.get("more_body"):
                    return
    except TimeoutError:
        return


class HostOriginGuard:
    """ASGI middleware applying the Host and Origin rules above to every HTTP request."""

    def __init__(self, app, *, bound_host: str, allowed_hosts=(), allowed_origins=(), on_refuse=None):
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = {h.lower().strip("[]") for h in allowed_hosts} | {bound_host.lower().strip("[]")}
        self.any_origin = "*" in allowed_origins
        self.origins = {normalize_origin(o) for o in allowed_origins if o != "*"}
        self.on_refuse = on_refuse  # called with (path, status) for each refusal (metrics)

    def host_ok(self, host: str) -> bool:
        if self.any_host or host in self.hosts or is_ip(host):
            return True
        return host in LOCAL_NAMES or host.endswith(".localhost")

    def origin_ok(self, origin: str, host_header: str) -> bool:
        if self.any_origin:
            return True
        try:
            o = normalize_origin(origin)
        except ValueError:
            return False
        if o in self.origins:
            return True
        # Same origin: the page was served by this server, under the Host the browser uses.
        host, port = split_host(host_header)
        if not host:
            return False
        shown = f"[{host}]" if ":" in host else host
        for scheme, default in (("http", "80"), ("https", "443")):
            if o == f"{scheme}://{shown}" + (f":{port}" if port and port != default else ""):
                return True
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers", []):
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        host_header = headers.get("host", "")
        host, _ = split_host(host_header)
        message = None
        if host_header and not self.host_ok(host):
            message = (
                f"Host {host_header!r} is not allowed (a guard against DNS rebinding); start the "
                "server with --allowed-host NAME to serve it under that name"
            )
        elif "origin" in headers and not self.origin_ok(headers["origin"], host_header):
            message = (
                f"cross-origin requests from {headers['origin']!r} are refused; start the server "
                "with --allowed-origin ORIGIN to let that page use it"
            )
        if message is None:
            return await self.app(scope, receive, send)
        if self.on_refuse:
            self.on_refuse(scope.get("path", ""), 403)
        await _drain(receive)
        body = json.dumps(
            {"error": {"message": message, "type": "permission_error", "param": None,
                       "code": "forbidden"}}  # fmt: skip
        ).encode()
        await send({
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close")],
        })  # fmt: skip
        await send({"type": "http.response.body", "body": body})
