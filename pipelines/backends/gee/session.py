"""Earth Engine sessions: credentials, project and endpoint, checked before anything is written.

Credentials, in order: ``--gee-key-file`` (a service-account JSON key), application-default credentials
(``GOOGLE_APPLICATION_CREDENTIALS`` or ``gcloud auth application-default login``), then what
``earthengine authenticate`` stored. ``--gee-url`` points the client at another endpoint (a local stand-in in the
tests: it needs no credentials). Neither the key file's content nor a token is ever logged or written.

Requests go through :class:`Transport` (``ee.Initialize(http_transport=...)``, a public option of the client): a
connection pool as large as the concurrency (``requests``' default keeps 10, so 40 threads would reconnect on most
calls), a timeout on every read (``ee`` sets none: a stalled answer would hold a thread for ever) and the body read in
one piece (``requests`` reads a 2 MB computePixels answer in 10 kB pieces, each a pass through the GIL).
"""
from __future__ import annotations

import gc
import json
import os
import re
import threading
from pathlib import Path

from mmearth_data.errors import MMEarthError

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
HOW = ("run `earthengine authenticate`, or pass --gee-key-file KEY.json (a service account), or set "
       "GOOGLE_APPLICATION_CREDENTIALS")
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 330.0   # Earth Engine ends an interactive computation after 5 minutes: a little more than that
_LOCK = threading.Lock()
_CURRENT: dict[str, tuple] = {}   # the settings ee was last initialized with (ee's state is global)


def check(project: str | None, key_file: str | None, url: str | None) -> str:
    """Which credentials will be used ("key-file", "application-default", "persistent", "none"); raises a
    one-line :class:`MMEarthError` naming the remedy when there are none."""
    if not project:
        raise MMEarthError("--gee-project PROJECT is required with Earth Engine (the Cloud project registered for it)")
    if key_file:
        path = Path(key_file)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise MMEarthError(f"--gee-key-file {key_file}: not a readable JSON key file") from None
        if doc.get("type") != "service_account" or "client_email" not in doc or "private_key" not in doc:
            raise MMEarthError(f"--gee-key-file {key_file}: not a service-account key (no client_email/private_key)")
        return "key-file"
    if url:
        return "none"          # a non-Google endpoint (the tests' stand-in)
    adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc:
        if not Path(adc).is_file():
            raise MMEarthError(f"GOOGLE_APPLICATION_CREDENTIALS={adc}: no such file; {HOW}")
        return "application-default"
    gcloud_adc = Path(os.environ.get("CLOUDSDK_CONFIG", Path.home() / ".config" / "gcloud")) / \
        "application_default_credentials.json"
    if gcloud_adc.is_file():
        return "application-default"
    try:
        from ee import oauth

        if Path(oauth.get_credentials_path()).is_file():
            return "persistent"
    except ImportError:
        raise MMEarthError("Earth Engine needs earthengine-api: pip install 'mmearth-data[build]'") from None
    raise MMEarthError(f"no Earth Engine credentials found: {HOW}")


class Transport:
    """The httplib2-like object ``ee`` sends its requests through (the interface of ``ee``'s own, built on
    ``requests``): connection errors and timeouts become ``ConnectionError`` / ``TimeoutError``, which the
    executor retries; a truncated body is a ``ConnectionError`` too, never a short array."""

    def __init__(self, pool: int = 40, read_timeout_s: float = READ_TIMEOUT_S):
        import http.client

        import httplib2
        import requests
        import urllib3

        self.timeout = (CONNECT_TIMEOUT_S, read_timeout_s)
        self._session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._response = httplib2.Response
        self._timeouts = (requests.Timeout, urllib3.exceptions.TimeoutError)
        self._failures = (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException)

    def request(self, uri: str, method: str = "GET", body=None, headers=None, redirections=None,
                connection_type=None):
        try:
            with self._session.request(method, uri, data=body, headers=headers, timeout=self.timeout,
                                       stream=True) as response:
                content = response.raw.read(decode_content=True)
        except self._timeouts as e:
            raise TimeoutError(f"{method} {_no_query(uri)}: {_no_query(str(e))}") from None
        except self._failures as e:
            raise ConnectionError(f"{method} {_no_query(uri)}: {type(e).__name__}: {_no_query(str(e))}") from None
        out = dict(response.headers)
        out["status"] = response.status_code
        return self._response(out), content


def _no_query(text: str) -> str:
    """``text`` without the query strings of the URLs or paths in it (an API key travels as ``?key=``), for
    messages that reach the ledger and logs."""
    return _QUERY.sub("?<redacted>", text)


_QUERY = re.compile(r"\?[^\s'\")]+")


def connect(project: str, key_file: str | None = None, url: str | None = None, high_volume: bool = False,
            pool: int = 40, read_timeout_s: float = READ_TIMEOUT_S) -> None:
    """Initialize the ``ee`` client once per process for (project, credentials, endpoint, transport)."""
    key = (project, key_file, url, high_volume, pool, read_timeout_s)
    with _LOCK:
        if _CURRENT.get("key") == key:
            return
        import ee

        kind = check(project, key_file, url)
        if kind == "key-file":
            email = json.loads(Path(key_file).read_text(encoding="utf-8"))["client_email"]
            credentials = ee.ServiceAccountCredentials(email, key_file)
        elif kind == "application-default":
            import google.auth

            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/earthengine",
                                                         "https://www.googleapis.com/auth/cloud-platform"])
        elif kind == "persistent":
            credentials = "persistent"
        else:
            credentials = None
        ee.Initialize(credentials=credentials, project=project,
                      url=url or (HIGH_VOLUME_URL if high_volume else None),
                      http_transport=Transport(pool, read_timeout_s))
        ee.data.setMaxRetries(0)   # retries are the ledger's: counted, jittered, quota-aware
        # ee now holds ~150k long-lived objects (its API signatures, two discovery documents); every full garbage
        # collection would walk them (~100 ms here), and the JSON of each tile's requests triggers one every few
        # tiles: they are set aside once, as servers do after start-up (they are never garbage)
        gc.collect()
        gc.freeze()
        _CURRENT["key"] = key
