"""A local SAS token endpoint (Planetary Computer's ``/api/sas/v1/token/{collection}``) issuing short-lived tokens.

Tokens carry the fields of PC's (expiry ``se``, permissions ``sp``, version ``sv``, signature ``sig``);
``valid(query)`` checks the signature and the expiry, so a Range server given ``authorize=tokens.valid`` refuses
expired or forged URLs with 403, as Azure does. Faults (``("status", 429)`` etc.) are consumed one per request; 429
carries ``Retry-After``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from urllib.parse import parse_qs, urlencode

from .loopback import LoopbackServer, QuietHandler

SERVICE_VERSION = "2021-06-08"   # the Azure Storage service version PC tokens name


class TokenServer(LoopbackServer):
    def __init__(self, lifetime_s: float = 5.0, retry_after_s: float = 0.2):
        self.lifetime_s = lifetime_s
        self.retry_after_s = retry_after_s
        self.faults: list[tuple] = []
        self.requests: list[str] = []
        self._key = secrets.token_bytes(32)   # this server's signing key, made at start: none is stored anywhere
        self.refused = 0
        # collections that need a Planetary Computer account ("msft:requires_account": true): refused (403) unless
        # the request carries one of ``subscription_keys`` in Ocp-Apim-Subscription-Key, as the SDK sends it
        self.account_only: set[str] = set()
        self.subscription_keys: set[str] = set()
        self._lock = threading.Lock()
        server = self

        class Handler(QuietHandler):

            def do_GET(self):
                with server._lock:
                    server.requests.append(self.path)
                    fault = server.faults.pop(0) if server.faults else None
                collection = self.path.rstrip("/").rsplit("/", 1)[-1]
                if fault is None and collection in server.account_only and \
                        self.headers.get("Ocp-Apim-Subscription-Key") not in server.subscription_keys:
                    fault = ("status", 403)
                if fault and fault[0] == "status":
                    self.send_response(fault[1])
                    if fault[1] == 429:
                        self.send_header("Retry-After", str(server.retry_after_s))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                expiry = time.time() + server.lifetime_s
                token = server.token(expiry)
                body = json.dumps({"msft:expiry": dt.datetime.fromtimestamp(expiry, dt.timezone.utc).isoformat(),
                                   "token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.serve(Handler)

    def token(self, expiry: float) -> str:
        se = f"{expiry:.3f}"
        sig = hmac.new(self._key, se.encode(), hashlib.sha256).hexdigest()
        # the fields of a real SAS token (expiry, permissions, service version, resource), composed at run time
        return urlencode({"se": se, "sp": "rl", "sv": SERVICE_VERSION, "sr": "c", "sig": sig})

    def valid(self, query: str) -> bool:
        q = parse_qs(query)
        try:
            se, sig = q["se"][0], q["sig"][0]
        except KeyError:
            ok = False
        else:
            ok = hmac.compare_digest(sig, hmac.new(self._key, se.encode(), hashlib.sha256).hexdigest()) \
                and float(se) > time.time()
        if not ok:
            with self._lock:
                self.refused += 1
        return ok
