"""Earth Engine sessions: credentials, project and endpoint, checked before anything is written.

Credentials, in ``ee``'s order: ``--gee-key-file`` (a service-account JSON key), what ``earthengine authenticate``
stored, then ``google.auth.default()`` (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default
login``, or the metadata server of Compute Engine, Cloud Run, GKE and Vertex AI). ``--gee-url`` points the client at
another endpoint (a local stand-in in the tests: it needs no credentials). Neither the key file's content nor a
token is ever logged or written.

Requests go through :class:`Transport` (``ee.Initialize(http_transport=...)``, a public option of the client): a
connection pool as large as the concurrency (``requests``' default keeps 10, so 40 threads would reconnect on most
calls), a timeout on every read (``ee`` sets none: a stalled answer would hold a thread for ever) and the body read in
one piece (``requests`` reads a 2 MB computePixels answer in 10 kB pieces, each a pass through the GIL), on
``urllib3`` without ``requests``' per-call overhead.
"""
from __future__ import annotations

import gc
import json
import os
import re
import threading
from pathlib import Path

from mmearth_data.errors import MMEarthError, one_line

DEFAULT_URL = "https://earthengine.googleapis.com"
HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
HOW = ("run `earthengine authenticate`, or pass --gee-key-file KEY.json (a service account), or set "
       "GOOGLE_APPLICATION_CREDENTIALS")
WORKLOAD_TAG = "mmearth-data"   # shown with this tool's EECU use in the Cloud project (ee: 1-63 of [a-z0-9_-])
CONNECT_TIMEOUT_S = 30.0
from .options import READ_TIMEOUT_S  # noqa: E402,F401 - declared with the other Earth Engine options
_LOCK = threading.Lock()
_CURRENT: dict[str, tuple] = {}   # the settings ee was last initialized with (ee's state is global)


def check(project: str | None, key_file: str | None, url: str | None) -> str:
    """Which credentials will be used ("key-file", or what :func:`credentials` finds: "earthengine" for the file
    ``earthengine authenticate`` stored, "application-default" for ``google.auth.default()``, "none" for a
    non-Google endpoint without either); raises a one-line :class:`MMEarthError` naming the remedy when there are
    none."""
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
    return credentials(url)[0]


def credentials(url: str | None = None) -> tuple[str, object]:
    """(kind, credentials) found as ``ee`` finds them (``ee.data.get_persistent_credentials``): the file
    ``earthengine authenticate`` stored first, then ``google.auth.default()``: ``GOOGLE_APPLICATION_CREDENTIALS``,
    gcloud's application-default credentials, or the metadata server on Compute Engine, Cloud Run, GKE and
    Vertex AI. With ``url`` (another endpoint, e.g. the tests' stand-in) none are used (only ``--gee-key-file``):
    a stand-in must never make a run depend on the machine's own Google credentials or network."""
    if url:
        return "none", None
    try:
        import google.auth
        from ee import oauth
    except ImportError:
        raise MMEarthError("Earth Engine needs earthengine-api: pip install 'mmearth-data[build]'") from None
    stored = Path(oauth.get_credentials_path())
    try:
        args = json.loads(stored.read_text(encoding="utf-8")) if stored.is_file() else {}
    except (OSError, ValueError):
        raise MMEarthError(f"{stored}: not a readable Earth Engine credentials file; run `earthengine "
                           "authenticate` again") from None
    if args.get("refresh_token"):   # as ee.data.get_persistent_credentials builds them (it also refreshes them
        from google.oauth2 import credentials as oauth2   # once: the run's first request does that here)

        return "earthengine", oauth2.Credentials(None, **oauth.get_credentials_arguments())
    adc = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if adc and not Path(adc).is_file():
        raise MMEarthError(f"GOOGLE_APPLICATION_CREDENTIALS={adc}: no such file; {HOW}")
    scopes = ["https://www.googleapis.com/auth/earthengine", "https://www.googleapis.com/auth/cloud-platform"]
    try:
        found, _ = google.auth.default(scopes=scopes)
    except google.auth.exceptions.DefaultCredentialsError:
        raise MMEarthError(f"no Earth Engine credentials found: {HOW}") from None
    except google.auth.exceptions.GoogleAuthError as e:   # e.g. a malformed key file named by the environment
        raise MMEarthError(f"Earth Engine credentials: {e}; {HOW}") from None
    return "application-default", found


class Transport:
    """The httplib2-like object ``ee`` sends its requests through, on ``urllib3`` (a connection pool per host as large
    as the concurrency, the body read in one piece): connection errors and timeouts become ``ConnectionError`` /
    ``TimeoutError``, which the executor retries; a truncated body is a ``ConnectionError`` too, never a short array.

    ``requests`` (what ``ee`` uses by default) merges its settings, proxies and cookies on every call and reads a
    large answer in small pieces; the proxies and CA bundle it would read from the environment are read here once
    per host (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``)."""

    def __init__(self, pool: int = 40, read_timeout_s: float = READ_TIMEOUT_S):
        import http.client

        import httplib2
        import urllib3

        self.timeout = urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=read_timeout_s)
        self._options = {"num_pools": 4, "maxsize": pool, "ca_certs": _ca_bundle()}
        self._managers: dict[tuple[str, str], urllib3.PoolManager] = {}
        self._lock = threading.Lock()
        self._response = httplib2.Response
        self._timeouts = (urllib3.exceptions.TimeoutError, TimeoutError)
        self._failures = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)

    def _manager(self, uri: str):
        """The pool for the URL's scheme and host: through the environment's proxy for it, if any."""
        import urllib.request
        from urllib.parse import urlsplit

        import urllib3

        parts = urlsplit(uri)
        key = (parts.scheme, parts.netloc)
        with self._lock:
            found = self._managers.get(key)
            if found is None:
                proxy = urllib.request.getproxies().get(parts.scheme)
                if proxy and urllib.request.proxy_bypass(parts.hostname or ""):
                    proxy = None
                found = self._managers[key] = (urllib3.ProxyManager(proxy, **self._options) if proxy
                                               else urllib3.PoolManager(**self._options))
            return found

    def request(self, uri: str, method: str = "GET", body=None, headers=None, redirections=None,
                connection_type=None):
        try:
            response = self._manager(uri).request(method, uri, body=body, headers=headers, timeout=self.timeout,
                                                  retries=False, redirect=False, preload_content=True)
        except self._timeouts as e:
            raise TimeoutError(f"{method} {_no_query(uri)}: {_no_query(str(e))}") from None
        except self._failures as e:
            raise ConnectionError(f"{method} {_no_query(uri)}: {type(e).__name__}: {_no_query(str(e))}") from None
        out = dict(response.headers)
        out["status"] = response.status
        return self._response(out), response.data


def _ca_bundle() -> str | None:
    """The CA bundle ``requests`` would use: ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        if os.environ.get(name):
            return os.environ[name]
    try:
        import certifi

        return certifi.where()
    except ImportError:
        return None   # the system's


def _no_query(text: str) -> str:
    """``text`` without the query strings of the URLs or paths in it (an API key travels as ``?key=``), for
    messages that reach the ledger and logs."""
    return _QUERY.sub("?<redacted>", text)


_QUERY = re.compile(r"\?[^\s'\")]+")


class RestError(Exception):
    """An Earth Engine answer other than 200: its status, message and Retry-After (the executor classifies it)."""

    def __init__(self, status: int, message: str, retry_after: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.retry_after = status, retry_after


class Rest:
    """The two methods of Earth Engine's REST API (v1) that a build sends per tile, ``value:compute`` and
    ``image:computePixels``, posted as the JSON ``ee.data.computeValue`` / ``computePixels`` would post (expressions
    assembled by templates.py), through the same transport and credentials as ``ee``.

    ``ee``'s own path re-encodes and re-optimizes the whole graph per call and builds each request from the
    discovery document: with many requests in flight on a few cores, that Python time, not the network, would
    bound the tiles per second."""

    def __init__(self, base_url: str, project: str, credentials, transport: Transport):
        import platform

        import ee

        self.root = base_url.rstrip("/")
        self.base = f"{self.root}/v1/projects/{project}"
        if credentials is not None:
            import google_auth_httplib2

            if getattr(credentials, "quota_project_id", None):   # as ee: the project billed is --gee-project's
                credentials = credentials.with_quota_project(None)
            transport = google_auth_httplib2.AuthorizedHttp(credentials, http=transport)
        self.http = transport
        self.headers = {"content-type": "application/json", "x-goog-user-project": project,
                        "x-goog-api-client": f"ee-py/{ee.__version__} python/{platform.python_version()}"}

    def post(self, method: str, body: str) -> bytes:
        """The answer's bytes to a JSON ``body``; :class:`RestError` for any status but 200."""
        response, content = self.http.request(f"{self.base}/{method}?prettyPrint=false", "POST", body=body,
                                              headers=dict(self.headers))
        if response.status != 200:
            raise RestError(response.status, _message(content), response.get("retry-after"))
        return content

    def compute_value(self, expression: str):
        """The value of an expression (JSON text, templates.expression_json)."""
        return json.loads(self.post("value:compute", '{"expression":' + expression + _TAGGED))["result"]

    def compute_pixels(self, expression: str, grid: dict, bands: list[str], file_format: str = "NPY") -> bytes:
        """The pixels of an image expression (JSON text) on ``grid`` (a PixelGrid), of ``bands``."""
        tail = json.dumps({"fileFormat": file_format, "grid": grid, "bandIds": bands, "workloadTag": WORKLOAD_TAG},
                          separators=(",", ":"))
        return self.post("image:computePixels", '{"expression":' + expression + "," + tail[1:])

    def get_asset(self, asset_id: str) -> dict:
        """The asset's metadata (``type``: IMAGE, IMAGE_COLLECTION, ...), as ``ee.data.getAsset`` asks for it."""
        from ee import _cloud_api_utils

        name = _cloud_api_utils.convert_asset_id_to_asset_name(asset_id)
        response, content = self.http.request(f"{self.root}/v1/{name}?prettyPrint=false", "GET",
                                              headers=dict(self.headers))
        if response.status != 200:
            raise RestError(response.status, _message(content), response.get("retry-after"))
        return json.loads(content)


_TAGGED = ',"workloadTag":"' + WORKLOAD_TAG + '"}'


def _message(content: bytes) -> str:
    """The message of an error answer (``{"error": {"message": ...}}``, as Google APIs write it), else its text."""
    try:
        return str(json.loads(content)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return content[:300].decode("utf-8", "replace")


HEAP_KEPT_BYTES = 128 * 1024 * 1024   # freed memory a glibc arena keeps before returning its top to the system
LARGE_ALLOC_BYTES = 32 * 1024 * 1024   # blocks from this size up are mapped on their own (glibc's maximum)
_TUNED = threading.Event()   # set by tune_process(): connect() then sets the ee client's objects aside too


def keep_freed_memory() -> bool:
    """Keep freed blocks in glibc's heap instead of returning them to the system (False where the C library is
    not glibc). A process-wide setting: called only by :func:`tune_process`.

    Each tile's computePixels answer, its planes and arrays are blocks above glibc's mmap threshold: each is mapped
    anew and unmapped when freed, and the next tile faults the same memory back in page by page; kept in the heap,
    they are reused. The cost: the process keeps its peak heap (about the answers in flight) until it exits.

    Returns:
        Whether glibc took both settings.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3   # malloc.h
    return bool(libc.mallopt(m_mmap_threshold, LARGE_ALLOC_BYTES)) and bool(libc.mallopt(m_trim_threshold,
                                                                                         HEAP_KEPT_BYTES))


def set_aside_long_lived() -> None:
    """Move every object alive now out of the garbage collector's reach (``gc.freeze``): the ``ee`` client's API
    signatures and discovery documents live as long as the process and are never garbage, but every full
    collection (the JSON of each tile's requests triggers them) would walk them again. Process-wide: called only
    by :func:`tune_process` and, in a process that called it, by :func:`connect`."""
    gc.collect()
    gc.freeze()


def tune_process(*, heap: bool = True, projections: bool = True, collector: bool = True) -> None:
    """Opt this process in to the settings of a long export through Earth Engine; library code never changes them
    by itself (a notebook that routes one modality to Earth Engine keeps its heap, collector and threads). Call it
    once, early, in each process that exports.

    Args:
        heap: keep freed memory in glibc's heap (:func:`keep_freed_memory`).
        projections: run every projection on one thread (:func:`pipelines.grid.project_on_one_thread`).
        collector: set the long-lived objects aside from the garbage collector (:func:`set_aside_long_lived`),
            now and again once :func:`connect` has initialized the ``ee`` client.
    """
    from ...grid import project_on_one_thread

    if heap:
        keep_freed_memory()
    if projections:
        project_on_one_thread()
    if collector:
        _TUNED.set()
        set_aside_long_lived()


def connect(project: str, key_file: str | None = None, url: str | None = None, high_volume: bool = False,
            pool: int = 40, read_timeout_s: float = READ_TIMEOUT_S) -> Rest:
    """Initialize the ``ee`` client once per process for (project, credentials, endpoint, transport); the REST
    client for the same."""
    key = (project, key_file, url, high_volume, pool, read_timeout_s)
    with _LOCK:
        if _CURRENT.get("key") == key:
            return _CURRENT["rest"]
        import ee

        if check(project, key_file, url) == "key-file":
            email = json.loads(Path(key_file).read_text(encoding="utf-8"))["client_email"]
            found = ee.ServiceAccountCredentials(email, key_file)
        else:
            found = credentials(url)[1]
        base_url = url or (HIGH_VOLUME_URL if high_volume else DEFAULT_URL)
        transport = Transport(pool, read_timeout_s)
        ee.Reset()   # ee keeps earlier credentials when given None: start from nothing
        try:
            ee.Initialize(credentials=found, project=project, url=base_url, http_transport=transport)
        except Exception as e:  # noqa: BLE001 - a revoked token, a project not registered: one line, the remedy
            raise MMEarthError(f"Earth Engine refused to start with project {project} "
                               f"({_no_query(one_line(e))}); {HOW}") from None
        ee.data.setMaxRetries(0)   # retries are the ledger's: counted, jittered, quota-aware
        if _TUNED.is_set():   # the process opted in: ee's objects, loaded now, are set aside too
            set_aside_long_lived()
        _CURRENT["key"], _CURRENT["rest"] = key, Rest(base_url, project, found, transport)
        return _CURRENT["rest"]
