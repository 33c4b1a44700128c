"""Progress and failure summaries read straight from the partition ledgers (works for any scheduler)."""
from __future__ import annotations

import json
import sqlite3
import textwrap
import time
from collections import Counter
from pathlib import Path

from mmearth_data.errors import MMEarthError

from .staging import FINAL, PartitionStore

CONFIG_NAME = "export.json"


def read_config(path: Path) -> dict:
    """An export's ``export.json``; a damaged one is one line (it records the settings every later step checks)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        wrong = [k for k, t in (("identity", dict), ("config", dict), ("tiles", int), ("partitions", int))
                 if not isinstance(doc.get(k), t) or isinstance(doc.get(k), bool)]
        if wrong:
            raise ValueError(f"{', '.join(wrong)} missing or of the wrong type")
        return doc
    except (OSError, ValueError, RecursionError) as e:
        raise MMEarthError(f"{path}: damaged ({str(e)[:100]}); it records the export's settings: restore it from a "
                           "copy, or export again into a new --out") from None


def _config(out_dir: Path) -> dict:
    path = Path(out_dir) / CONFIG_NAME
    if not path.is_file():
        raise MMEarthError(f"{out_dir}: not an export directory (no {CONFIG_NAME}; run mmearth-data export first)")
    return read_config(path)


def _stores(out_dir: Path):
    for p in sorted((Path(out_dir) / "staging").glob("part-*.sqlite")):
        try:
            store = PartitionStore(p, readonly=True)
        except sqlite3.Error:
            continue
        try:
            yield p, store
        finally:
            store.close()


def tile_counts(out_dir: Path) -> Counter:
    counts: Counter = Counter()
    for _, store in _stores(out_dir):
        try:
            counts.update(store.counts())
        except sqlite3.Error:  # a partition being created right now
            continue
    return counts


def summarize(out_dir: str | Path) -> dict:
    """Tiles by status, partitions complete, failures by modality and reason, retries spent."""
    out_dir = Path(out_dir)
    cfg = _config(out_dir)
    tiles: Counter = Counter()
    reasons: Counter = Counter()
    modality_status: Counter = Counter()
    retries = 0
    searches = 0
    gee: dict = {}
    gee_requests: Counter = Counter()
    complete = 0
    examples: dict[str, str] = {}
    for _, store in _stores(out_dir):
        tiles.update(store.counts())
        complete += store.meta("complete") is not None
        searches += int(store.meta("searches", 0))
        g = store.meta("gee")
        if g:
            gee_requests.update(g.get("by_method", {}))
            c = g["concurrency"]
            gee = {"start": c["start"], "now": c["now"], "min": min(c["min"], gee.get("min", c["min"])),
                   "changes": gee.get("changes", 0) + c["changes"], "history": c["history"]}
        for modality, status, error_class, n, spent, message in store.db.execute(
                "SELECT modality, status, error_class, count(*), sum(max(attempts - 1, 0)), min(message) "
                "FROM ledger GROUP BY modality, status, error_class"):
            modality_status[(modality, status)] += n
            retries += int(spent or 0)
            if error_class:
                reasons[(modality, status, error_class)] += n
                examples.setdefault(f"{modality}/{error_class}", message or "")
    total = int(cfg["tiles"])
    final = sum(tiles.get(s, 0) for s in FINAL)
    return {
        "out": str(out_dir), "config_hash": cfg["config_hash"], "tiles": total, "final": final,
        "pending": total - final, "by_status": dict(sorted(tiles.items())),
        "partitions": int(cfg["partitions"]), "partitions_complete": complete, "retries": retries,
        "searches": searches, "gee_concurrency": gee, "gee_requests": dict(sorted(gee_requests.items())),
        "modalities": {f"{m}/{s}": n for (m, s), n in sorted(modality_status.items())},
        "failures": [{"modality": m, "status": s, "reason": e, "tiles": n, "example": examples.get(f"{m}/{e}", "")}
                     for (m, s, e), n in sorted(reasons.items(), key=lambda kv: -kv[1])],
    }


def format_summary(s: dict) -> str:
    by = s["by_status"]
    lines = [f"{s['out']}: {s['final']}/{s['tiles']} tiles final ({by.get('done', 0)} done, {by.get('no_s2', 0)} no_s2, "
             f"{by.get('failed', 0)} failed), {by.get('retry', 0)} to retry, {s['pending']} pending; "
             f"partitions {s['partitions_complete']}/{s['partitions']} complete; {s['retries']} retries"
             + (f"; {s['searches']} STAC searches ({s['searches'] / max(1, s['final']):.2f} per tile)"
                if s.get("searches") else "")]
    g = s.get("gee_concurrency")
    if g:
        steps = ", ".join(f"{v} at {t:g} s" for t, v in g["history"][-8:])
        lines.append(f"Earth Engine concurrency: started at {g['start']}, now {g['now']}, lowest {g['min']}, "
                     f"{g['changes']} changes (last: {steps})")
    sent = s.get("gee_requests")
    if sent:
        total = sum(sent.values())
        lines.append(f"Earth Engine requests: {total} ({total / max(1, s['final']):.2f} per final tile: "
                     + ", ".join(f"{n} {m}" for m, n in sent.items()) + ")")
    if s["failures"]:
        lines.append("not ok, by reason:")
        for f in s["failures"]:
            lines.append(f"  {f['modality']:<18} {f['status']:<7} {f['reason']:<14} {f['tiles']:>7} tiles"
                         + (f"  e.g. {shorten(f['example'])}" if f["example"] else ""))
    return "\n".join(lines)


def shorten(text: str, width: int = 100) -> str:
    """The first line of ``text`` cut at a word boundary with an ellipsis (never mid-word)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    return textwrap.shorten(first, width=width, placeholder=" …") if len(first) > width else first


class ProgressView:
    """Progress polled from the ledgers: a tqdm bar on a terminal; else (``log``: a batch job's log file) one line
    every ``log_interval_s`` with tiles final, failures, rate and time left."""

    def __init__(self, out_dir: Path, enabled: bool, interval_s: float = 1.0, log=None, log_interval_s: float = 60.0):
        self.out_dir, self.enabled, self.interval_s = Path(out_dir), enabled, interval_s
        self.log, self.log_interval_s = (None if enabled else log), log_interval_s
        self.bar = None
        self._last = 0.0
        self._start: tuple[float, int] | None = None

    def __enter__(self) -> "ProgressView":
        if self.enabled:
            from tqdm import tqdm

            total = int(_config(self.out_dir)["tiles"])
            start = sum(tile_counts(self.out_dir).get(s, 0) for s in FINAL)
            self.bar = tqdm(total=total, initial=start, desc="export", unit="tile", smoothing=0.1)
        elif self.log is not None:
            self.total = int(_config(self.out_dir)["tiles"])
            self._start = (time.monotonic(), sum(tile_counts(self.out_dir).get(s, 0) for s in FINAL))
            self._last = time.monotonic()
        return self

    def refresh(self) -> None:
        if self.bar is None and self._start is None:
            return
        wait = self.interval_s if self.bar is not None else self.log_interval_s
        if time.monotonic() - self._last < wait:
            return
        self._last = time.monotonic()
        c = tile_counts(self.out_dir)
        final = sum(c.get(s, 0) for s in FINAL)
        if self.bar is None:
            self._line(final, c)
            return
        self.bar.set_postfix(no_s2=c.get("no_s2", 0), failed=c.get("failed", 0), retry=c.get("retry", 0),
                             refresh=False)
        self.bar.update(final - self.bar.n)

    def _line(self, final: int, c: Counter) -> None:
        t0, n0 = self._start
        rate = (final - n0) / max(time.monotonic() - t0, 1e-9)
        left = f", about {(self.total - final) / rate / 3600:.1f} h left" if rate > 0 else ""
        self.log(f"export: {final}/{self.total} tiles final ({100 * final / max(self.total, 1):.1f} %; "
                 f"{c.get('no_s2', 0)} no_s2, {c.get('failed', 0)} failed, {c.get('retry', 0)} to retry), "
                 f"{rate:.2f} tiles/s{left}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self._last = 0.0
            self.refresh()
            self.bar.close()
