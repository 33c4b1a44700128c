"""Earth Engine sessions: credentials, project and endpoint, checked before anything is written.

Credentials, in order: ``--gee-key-file`` (a service-account JSON key), application-default credentials
(``GOOGLE_APPLICATION_CREDENTIALS`` or ``gcloud auth application-default login``), then what
``earthengine authenticate`` stored. ``--gee-url`` points the client at another endpoint (a local stand-in in the
tests: it needs no credentials). Neither the key file's content nor a token is ever logged or written.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from mmearth_data.errors import MMEarthError

HIGH_VOLUME_URL = "https://earthengine-highvolume.googleapis.com"
HOW = ("run `earthengine authenticate`, or pass --gee-key-file KEY.json (a service account), or set "
       "GOOGLE_APPLICATION_CREDENTIALS")
_LOCK = threading.Lock()
_STARTED: dict[tuple, bool] = {}


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


def connect(project: str, key_file: str | None = None, url: str | None = None, high_volume: bool = False) -> None:
    """Initialize the ``ee`` client once per process for (project, credentials, endpoint)."""
    key = (project, key_file, url, high_volume)
    with _LOCK:
        if _STARTED.get(key):
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
                      url=url or (HIGH_VOLUME_URL if high_volume else None))
        ee.data.setMaxRetries(0)   # retries are the ledger's: counted, jittered, quota-aware
        _STARTED[key] = True
