"""A loopback HTTP server for tests: serves files with Range support and injects faults on request.

Faults are a queue consumed one per request: ``("status", 503)``, ``("status", 429)`` (with Retry-After: 0),
``("truncate", nbytes)`` (send the headers of the full body, then close after nbytes), ``("no-range",)``
(ignore the Range header and send 200 with the whole file), ``("delay", seconds)``, ``("corrupt",)`` (flip the
first byte of the body: wrong bytes, right length), ``("redirect", url)`` (a 302 to ``url``).

``random_faults(rate, seed, stall_s)`` adds seeded random faults to ``rate`` of the requests not handled by the
queue (503/500/502, 429, truncated bodies and, rarely, stalls longer than the client's timeout); ``injected``
counts what was injected. ``latency_s`` delays every response and ``bandwidth_bps`` caps each connection's
rate (for throughput benchmarks). Each entry of ``requests`` ends with ``sent``: the body bytes written.
"""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from .loopback import LoopbackServer, QuietHandler


class RangeServer(LoopbackServer):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.faults: list[tuple] = []
        self.requests: list[dict] = []
        self.injected: Counter = Counter()
        self.always_fail: set[str] = set()   # paths containing one of these always get a 503
        self.latency_s = 0.0
        self.bandwidth_bps = 0.0
        self.authorize = None                # query string -> bool; False answers 403 (an expired SAS URL)
        self.validators = True               # ETag and Last-Modified per file, as object stores and nginx send
        self._rate = 0.0
        self._rng = random.Random(0)
        self._stall_s = 0.0
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real object stores do

            def do_GET(self):
                self._respond(body=True)

            def do_HEAD(self):
                self._respond(body=False)

            def _respond(self, body: bool) -> None:
                fault = server._next_fault(self.path, self.headers.get("Range"), self.command)
                if server.latency_s:
                    time.sleep(server.latency_s)
                if fault and fault[0] == "delay":
                    time.sleep(fault[1])
                    fault = None
                if server.authorize is not None and not server.authorize(self.path.partition("?")[2]):
                    fault = ("status", 403)
                if fault and fault[0] == "redirect":
                    self.send_response(302)
                    self.send_header("Location", fault[1])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if fault and fault[0] == "status":
                    self.send_response(fault[1])
                    if fault[1] == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                path = server.root / self.path.split("?")[0].lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size - 1
                rng = self.headers.get("Range")
                if rng and not (fault and fault[0] == "no-range"):
                    first, _, last = rng.split("=")[1].partition("-")
                    start = int(first)
                    end = min(int(last), size - 1) if last else size - 1
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                else:
                    self.send_response(200)
                with open(path, "rb") as fh:
                    fh.seek(start)
                    payload = fh.read(end + 1 - start)
                if fault and fault[0] == "corrupt" and payload:
                    payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Accept-Ranges", "bytes")
                if server.validators:   # nginx's form: "<mtime hex>-<size hex>"
                    stat = path.stat()
                    self.send_header("ETag", f'"{int(stat.st_mtime):x}-{stat.st_size:x}"')
                    self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
                self.end_headers()
                if not body:
                    return
                if fault and fault[0] == "truncate":
                    self._send(payload[: min(fault[1], max(len(payload) - 1, 0))])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self._send(payload)

            def _send(self, payload: bytes) -> None:
                entry = server.requests[-1] if server.requests else {}
                mine = next((r for r in reversed(server.requests) if r.get("thread") == threading.get_ident()),
                            entry)
                step = 1 << 16
                t0 = time.monotonic()
                for i in range(0, len(payload), step):
                    block = payload[i:i + step]
                    try:
                        self.wfile.write(block)
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                        return
                    mine["sent"] = mine.get("sent", 0) + len(block)
                    if server.bandwidth_bps:
                        ahead = (i + len(block)) / server.bandwidth_bps - (time.monotonic() - t0)
                        if ahead > 0:
                            time.sleep(ahead)

        self.serve(Handler)

    def bytes_sent(self, contains: str = "") -> int:
        """Body bytes served for paths containing ``contains``."""
        with self._lock:
            return sum(r.get("sent", 0) for r in self.requests if contains in r["path"])

    def random_faults(self, rate: float, seed: int = 0, stall_s: float = 0.0) -> None:
        self._rate, self._rng, self._stall_s = rate, random.Random(seed), stall_s

    def _next_fault(self, path: str, rng: str | None, method: str = "GET") -> tuple | None:
        with self._lock:
            self.requests.append({"path": path, "range": rng, "method": method, "thread": threading.get_ident(),
                                  "sent": 0})
            if any(part in path for part in self.always_fail):
                self.injected["503"] += 1
                return ("status", 503)
            if self.faults:
                return self.faults.pop(0)
            if not self._rate or self._rng.random() >= self._rate:
                return None
            u = self._rng.random()
            if self._stall_s and u < 0.04:
                fault = ("delay", self._stall_s)
            elif u < 0.45:
                fault = ("status", self._rng.choice([500, 502, 503]))
            elif u < 0.7:
                fault = ("status", 429)
            else:
                fault = ("truncate", self._rng.randint(0, 200))
            self.injected[fault[0] if fault[0] != "status" else str(fault[1])] += 1
            return fault
