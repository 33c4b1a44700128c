"""The Earth Engine options of a run: who pays and with which credentials (never part of the data's identity),
the endpoint (part of it: a stand-in is other data), and how hard the project's quota is used."""
from __future__ import annotations

from dataclasses import dataclass

from ...defaults import GEE_CONCURRENCY as CONCURRENCY
from ...defaults import GEE_READ_TIMEOUT_S as READ_TIMEOUT_S
from ...settings import IF_SET, run_setting, setting


@dataclass(frozen=True)
class GeeOptions:
    project: str | None = run_setting(None)
    key_file: str | None = run_setting(None)
    url: str | None = setting(None, identity=IF_SET)    # another endpoint (the tests' stand-in)
    high_volume: bool = run_setting(False)
    concurrency: int = run_setting(CONCURRENCY)
    timeout_s: float = run_setting(READ_TIMEOUT_S)
    processes: int = run_setting(1)   # processes of this run sharing the project's quota (each takes its part)

    @property
    def given(self) -> bool:
        """Whether any credential or endpoint option was given (they are for Earth Engine only)."""
        return bool(self.project or self.key_file or self.url)
