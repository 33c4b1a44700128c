"""A real STAC API on loopback: stac-fastapi-pgstac over a throw-away PostgreSQL + PostGIS cluster.

Only this server answered bbox, datetime, ``query``, CQL2 ``filter`` and ``sortby`` correctly in our measurements
(``../shared/notes/offline-testing.md``). The cluster runs with fsync off in a temp directory, as the
``postgres`` user when the tests run as root (initdb refuses root), and everything is stopped at the end.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
POSTGIS_CONTROL = Path("/usr/share/postgresql/15/extension/postgis.control")


def unavailable() -> str | None:
    """Why the server cannot run here (None when it can)."""
    if not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL 15 binaries not found in {PG_BIN}"
    if not POSTGIS_CONTROL.is_file():
        return "PostGIS is not installed (apt-get install postgresql-15-postgis-3; .ci/run does this)"
    for mod in ("stac_fastapi.pgstac", "pypgstac", "uvicorn"):
        try:
            __import__(mod)
        except ImportError:
            return f"python package {mod} is missing (pip install -e '.[dev]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser (initdb refuses root)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collection_doc(cid: str) -> dict:
    return {"type": "Collection", "stac_version": "1.0.0", "id": cid, "description": f"test copy of {cid}",
            "license": "proprietary", "links": [],
            "extent": {"spatial": {"bbox": [[-180, -90, 180, 90]]},
                       "temporal": {"interval": [["2000-01-01T00:00:00Z", None]]}}}


class PgStacServer:
    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.pg_port = free_port()
        self.api_port = free_port()
        self._api: subprocess.Popen | None = None
        self._as_postgres = os.geteuid() == 0
        self._password = secrets.token_hex(8)   # initdb --auth=trust ignores it; clients want one set

    # -- processes ---------------------------------------------------------------------------------------------
    def _pg(self, *args: str) -> None:
        cmd = [str(PG_BIN / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(self.pg_port), "PGUSER": "postgres",
                "PGPASSWORD": self._password, "PGDATABASE": "stac"}

    def start(self) -> "PgStacServer":
        self.dir.mkdir(parents=True, exist_ok=True)
        data, sock = self.dir / "data", self.dir / "sock"
        sock.mkdir(exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.dir, "postgres")
            shutil.chown(sock, "postgres")
            os.chmod(self.dir, 0o755)
        self._pg("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
        self._pg("pg_ctl", "-D", str(data), "-l", str(self.dir / "server.log"), "-w", "start", "-o",
                 f"-h 127.0.0.1 -p {self.pg_port} -k {sock} -c fsync=off -c synchronous_commit=off "
                 "-c full_page_writes=off")
        subprocess.run(["psql", "-q", "-d", "postgres", "-c", "create database stac"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "pypgstac.pypgstac", "migrate"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "stac_fastapi.pgstac.app:create_app", "--factory", "--host",
             "127.0.0.1", "--port", str(self.api_port), "--log-level", "warning"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.dir / "api.log", "wb"),
            start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/_mgmt/ping", timeout=2):
                    return self
            except OSError:
                if self._api.poll() is not None:
                    raise RuntimeError(f"stac-fastapi exited: {(self.dir / 'api.log').read_text()[-2000:]}")
                time.sleep(0.2)
        raise RuntimeError("stac-fastapi did not answer /_mgmt/ping within 60 s")

    def stop(self) -> None:
        if self._api is not None and self._api.poll() is None:
            os.killpg(self._api.pid, signal.SIGTERM)
            try:
                self._api.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._api.pid, signal.SIGKILL)
        try:
            self._pg("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        except subprocess.CalledProcessError:
            pass

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # -- data --------------------------------------------------------------------------------------------------
    def load(self, items: list[dict]) -> None:
        """Upsert the collections the items name, then the items (replacing same ids)."""
        colls = sorted({it["collection"] for it in items})
        cpath, ipath = self.dir / "collections.ndjson", self.dir / "items.ndjson"
        cpath.write_text("".join(json.dumps(collection_doc(c)) + "\n" for c in colls))
        ipath.write_text("".join(json.dumps(it) + "\n" for it in items))
        for kind, path in (("collections", cpath), ("items", ipath)):
            subprocess.run([sys.executable, "-m", "pypgstac.pypgstac", "load", kind, str(path), "--method", "upsert"],
                           env=self.env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def clear(self) -> None:
        subprocess.run(["psql", "-q", "-c", "delete from pgstac.items"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL)
