"""SAS signing of Planetary Computer asset URLs, at read time.

A token is fetched per collection (``GET {token_url}/{collection}`` -> ``{"msft:expiry": ..., "token": ...}``,
parsed with ``planetary_computer``'s own :class:`~planetary_computer.sas.SASToken`), cached, and renewed once less
than a quarter of its life (at most 5 minutes) is left, so a URL is always signed just before it is used and a
100k-tile export outlives any number of token lifetimes. The token endpoint is a constructor argument (tests run a
local one). ``planetary_computer.sign()`` itself is not used: it signs only ``*.blob.core.windows.net`` hrefs,
keeps a token until 60 s before expiry (tokens shorter than that would be fetched on every read), and retries the
token request on its own, outside the ledger's retry policy.
"""
from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.request

from ..faults import RetryPolicy, TransientSourceError, classify, install_log_redaction, retry_after, with_retry


class SasSigner:
    """Sign hrefs with a per-collection SAS token from ``token_url``; thread-safe, counts token requests."""

    def __init__(self, token_url: str, *, policy: RetryPolicy | None = None, timeout_s: float = 20.0,
                 max_margin_s: float = 300.0):
        self.token_url = token_url.rstrip("/")
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.max_margin_s = max_margin_s
        self.requests = 0
        self._tokens: dict[str, tuple[str, dt.datetime, float]] = {}   # collection -> (token, expiry, lifetime)
        self._lock = threading.Lock()
        install_log_redaction()

    def sign(self, collection: str, href: str) -> str:
        token = self.token(collection)
        return f"{href}{'&' if '?' in href else '?'}{token}"

    def token(self, collection: str) -> str:
        with self._lock:  # one request per renewal, however many threads need it
            held = self._tokens.get(collection)
            now = dt.datetime.now(dt.timezone.utc)
            if held is not None:
                token, expiry, life = held
                if (expiry - now).total_seconds() > min(self.max_margin_s, life / 4):
                    return token
            token, expiry = with_retry(lambda: self._fetch(collection), self.policy, remote=True)
            self._tokens[collection] = (token, expiry, max(1e-3, (expiry - now).total_seconds()))
            return token

    def invalidate(self, collection: str) -> None:
        """Forget the token (a read was refused with 403: the next read fetches a new one)."""
        with self._lock:
            self._tokens.pop(collection, None)

    def _fetch(self, collection: str) -> tuple[str, dt.datetime]:
        from planetary_computer.sas import SASToken

        self.requests += 1
        url = f"{self.token_url}/{collection}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise TransientSourceError(f"SAS token endpoint {url}: HTTP Error {e.code}",
                                           retry_after_s=retry_after(e.headers.get("Retry-After"))) from None
            raise classify(e, remote=True) from None
        sas = SASToken(**doc)
        expiry = sas.expiry if sas.expiry.tzinfo else sas.expiry.replace(tzinfo=dt.timezone.utc)
        return sas.token, expiry
