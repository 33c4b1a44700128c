"""A loopback HTTP proxy in front of a real server (the pgstac API) that injects faults: ``("status", 504)``,
``("status", 429)`` (with Retry-After), ``("delay", s)``; consumed one per request. ``latency_s`` delays all.
Without ``upstream`` it is a forward proxy (what ``HTTP_PROXY`` names: requests carry their absolute URL).

Two modes make pgstac answer as a real service does (tests/servers/README.md): ``strip_next`` removes the ``next``
link of every search page (Planetary Computer may: microsoft/planetary-computer-apis#274), ``no_filter`` drops the
CQL2 filter classes from the conformance and the ``filter`` from search requests (Earth Search conforms to
``query``, not ``filter``, and ignores it)."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

from .loopback import LoopbackServer, QuietHandler


class FaultProxy(LoopbackServer):
    def __init__(self, upstream: str | None = None, retry_after_s: float = 0.3):
        self.upstream = upstream.rstrip("/") if upstream else None
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never through itself
        self.retry_after_s = retry_after_s
        self.faults: list[tuple] = []
        self.requests: list[str] = []
        self.bodies: list[bytes] = []   # the POST bodies forwarded
        self.searched_bytes = 0         # bytes of the search responses sent back
        self.latency_s = 0.0
        self.strip_next = False
        self.no_filter = False
        self._lock = threading.Lock()
        proxy = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self, method: str) -> None:
                with proxy._lock:
                    proxy.requests.append(f"{method} {self.path}")
                    fault = proxy.faults.pop(0) if proxy.faults else None
                if proxy.latency_s:
                    time.sleep(proxy.latency_s)
                if fault and fault[0] == "delay":
                    time.sleep(fault[1])
                elif fault and fault[0] == "status":
                    self.send_response(fault[1])
                    if fault[1] == 429:
                        self.send_header("Retry-After", str(proxy.retry_after_s))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if body and proxy.no_filter and self.path.split("?")[0].endswith("/search"):
                    doc = json.loads(body)
                    doc.pop("filter", None)
                    doc.pop("filter-lang", None)
                    body = json.dumps(doc).encode()
                if body:
                    with proxy._lock:
                        proxy.bodies.append(body)
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "accept")}
                forward = proxy.upstream is None
                req = urllib.request.Request(self.path if forward else proxy.upstream + self.path, data=body,
                                             method=method, headers=headers)
                try:
                    with direct.open(req, timeout=60) as r:
                        status, data, ctype = r.status, r.read(), r.headers.get("Content-Type", "application/json")
                except urllib.error.HTTPError as e:
                    status, data, ctype = e.code, e.read(), e.headers.get("Content-Type", "application/json")
                # links point at the upstream: rewrite them so paging comes back through the proxy
                if not forward:
                    data = data.replace(proxy.upstream.encode(), proxy.url.encode())
                if status == 200 and "json" in ctype and (proxy.strip_next or proxy.no_filter):
                    data = proxy.rewrite(self.path.split("?")[0], data)
                if self.path.split("?")[0].endswith("/search"):
                    with proxy._lock:
                        proxy.searched_bytes += len(data)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.serve(Handler)

    def rewrite(self, path: str, data: bytes) -> bytes:
        doc = json.loads(data)
        if self.strip_next and path.endswith("/search"):
            doc["links"] = [link for link in doc.get("links", []) if link.get("rel") != "next"]
        if self.no_filter and isinstance(doc.get("conformsTo"), list):
            doc["conformsTo"] = [c for c in doc["conformsTo"] if "filter" not in c.lower()]
        return json.dumps(doc).encode()
