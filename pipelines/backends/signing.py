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
import os
import threading
import urllib.error
import urllib.request

from ..faults import NoSource, RetryPolicy, TransientSourceError, classify, install_log_redaction, retry_after, \
    with_retry

SUBSCRIPTION_KEY = "PC_SDK_SUBSCRIPTION_KEY"   # the planetary-computer SDK's variable (settings.py)


def is_azure_blob(href: str) -> bool:
    """An Azure blob storage URL (what Planetary Computer's SAS tokens are for; planetary_computer.sign's rule)."""
    from urllib.parse import urlparse

    return (urlparse(href).hostname or "").endswith(".blob.core.windows.net")


class NeedsAccount(NoSource):
    """The token endpoint refused a collection (HTTP 403): it needs a Planetary Computer account
    (``"msft:requires_account": true``, e.g. sentinel-1-rtc). Its modality has no source for this run: no-data,
    recorded once per tile as ``no_source``, never a failure per read."""


class SasSigner:
    """Sign hrefs with SAS tokens from ``token_url``; thread-safe, counts token requests.

    A token is for a storage container, not a collection (the SDK asks ``{token_url}/{account}/{container}`` of the
    href; ``cop-dem-glo-30``'s collection names container ``copernicus-dem-stac`` while its files are in
    ``copernicus-dem``): an Azure blob href is signed with its container's token, any other (a mirror with a token
    service of its own) with its collection's. Each container has a lock of its own, so one waiting out a 429
    ("Try again in 23 seconds") never stalls the reads of the others."""

    def __init__(self, token_url: str, *, policy: RetryPolicy | None = None, timeout_s: float = 20.0,
                 max_margin_s: float = 300.0, every_href: bool = False):
        """``every_href``: sign hrefs of any host (a mirror with a token service of its own, named by
        ``--sas-token-url``); otherwise only Azure blob hrefs are signed, as the SDK signs them: a mirror's own
        URLs never ask Planetary Computer's token endpoint."""
        self.token_url = token_url.rstrip("/")
        self.every_href = every_href
        self.policy = policy or RetryPolicy()
        self.timeout_s = timeout_s
        self.max_margin_s = max_margin_s
        self.requests = 0
        self._tokens: dict[str, tuple[str, dt.datetime, float]] = {}   # scope -> (token, expiry, lifetime)
        self._refused: dict[str, NeedsAccount] = {}   # scopes the endpoint refused: not asked again
        self._scope_locks: dict[str, threading.Lock] = {}
        # sent as the SDK sends it (planetary_computer/sas.py: the Ocp-Apim-Subscription-Key header)
        self.subscription_key = os.environ.get(SUBSCRIPTION_KEY) or None
        self._lock = threading.Lock()
        install_log_redaction()

    def sign(self, collection: str, href: str) -> str:
        if not (self.every_href or is_azure_blob(href)):
            return href
        token = self.token(collection, self.scope(collection, href))
        return f"{href}{'&' if '?' in href else '?'}{token}"

    @staticmethod
    def scope(collection: str, href: str | None = None) -> str:
        """What a token is asked for: ``account/container`` of an Azure blob href, else the collection."""
        from urllib.parse import urlparse

        if href and is_azure_blob(href):
            parts = urlparse(href)
            container = parts.path.lstrip("/").split("/", 1)[0]
            return f"{parts.hostname.split('.', 1)[0]}/{container}"
        return collection

    def token(self, collection: str, scope: str | None = None) -> str:
        scope = scope or collection
        with self._lock:
            lock = self._scope_locks.setdefault(scope, threading.Lock())
        with lock:  # one request per renewal of a scope, however many threads need it; other scopes go on
            refused = self._refused.get(scope) or self._refused.get(collection)
            if refused is not None:
                raise refused
            held = self._tokens.get(scope)
            now = dt.datetime.now(dt.timezone.utc)
            if held is not None:
                token, expiry, life = held
                if (expiry - now).total_seconds() > min(self.max_margin_s, life / 4):
                    return token
            try:
                token, expiry = with_retry(lambda: self._fetch(collection, scope), self.policy, remote=True)
            except NeedsAccount as e:
                self._refused[scope] = self._refused[collection] = e
                raise
            self._tokens[scope] = (token, expiry, max(1e-3, (expiry - now).total_seconds()))
            return token

    def needs_account(self, collections) -> dict[str, str]:
        """Collection -> the one-line reason, for each of ``collections`` the token endpoint refuses (asked once
        each before a run; a refusal is kept, so this signer's reads of the collection are not asked again)."""
        out = {}
        for c in collections:
            try:
                self.token(c)
            except NeedsAccount as e:
                out[c] = str(e)
        return out

    def invalidate(self, collection: str, href: str | None = None) -> None:
        """Forget the token of the href's scope (a read was refused with 403: the next read fetches a new one)."""
        with self._lock:
            self._tokens.pop(self.scope(collection, href), None)

    def _fetch(self, collection: str, scope: str) -> tuple[str, dt.datetime]:
        from planetary_computer.sas import SASToken

        with self._lock:
            self.requests += 1
        url = f"{self.token_url}/{scope}"
        headers = {"Ocp-Apim-Subscription-Key": self.subscription_key} if self.subscription_key else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout_s) as r:
                doc = json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise TransientSourceError(f"SAS token endpoint {url}: HTTP Error {e.code}",
                                           retry_after_s=retry_after(e.headers.get("Retry-After"))) from None
            if e.code in (401, 403):
                raise NeedsAccount(
                    f"{collection} needs a Planetary Computer account: the SAS token endpoint {self.token_url} "
                    f"refused it (HTTP {e.code}"
                    f"{', with the key in ' + SUBSCRIPTION_KEY if self.subscription_key else ''}); set "
                    f"{SUBSCRIPTION_KEY} to your subscription key (planetarycomputer.microsoft.com/account/request)"
                    f" or take the modality from another backend with --modality-backend") from None
            raise classify(OSError(f"SAS token endpoint {url}: HTTP Error {e.code}"), remote=True) from None
        except (urllib.error.URLError, OSError) as e:   # the endpoint named: a mirror's reads fail for its sake
            raise TransientSourceError(f"SAS token endpoint {url}: {getattr(e, 'reason', e)}") from None
        sas = SASToken(**doc)
        expiry = sas.expiry if sas.expiry.tzinfo else sas.expiry.replace(tzinfo=dt.timezone.utc)
        return sas.token, expiry
