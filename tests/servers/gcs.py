"""A Google Cloud Storage emulator on loopback (``gcp-storage-emulator``), holding public objects read at the
public-object URL form ``<host>/<bucket>/<object>`` with Range, as ``storage.googleapis.com`` serves them; reached
as Google's own clients reach an emulator (``STORAGE_EMULATOR_HOST``)."""
from __future__ import annotations

import socket
from urllib.parse import quote


class PublicGCS:
    def __init__(self):
        from gcp_storage_emulator.server import create_server

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = create_server("127.0.0.1", self.port, in_memory=True)
        self._buckets: set[str] = set()

    @property
    def host(self) -> str:
        """What ``STORAGE_EMULATOR_HOST`` names."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "PublicGCS":
        import urllib3

        self.server.start()
        self.http = urllib3.PoolManager()
        return self

    def put(self, href: str, data: bytes) -> None:
        """Store ``data`` at ``gs://bucket/object`` (the bucket created on first use), by the JSON API's media
        upload, as the owner would."""
        bucket, _, name = href.removeprefix("gs://").partition("/")
        if bucket not in self._buckets:
            r = self.http.request("POST", f"{self.host}/storage/v1/b", json={"name": bucket})
            assert r.status in (200, 409), r.data[:200]
            self._buckets.add(bucket)
        r = self.http.request("POST", f"{self.host}/upload/storage/v1/b/{bucket}/o?uploadType=media&name="
                              f"{quote(name, safe='')}", body=data)
        assert r.status == 200, r.data[:200]

    def __exit__(self, *exc) -> None:
        self.server.stop()
