"""What ``validate`` found: errors and warnings, each naming where."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Finding:
    level: str  # "error" | "warning"
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level.upper():7s} {self.where}: {self.message}"


@dataclass
class Report:
    path: str
    n_tiles: int = 0
    tiles_checked: int = 0
    layout_only: bool = False
    findings: list[Finding] = field(default_factory=list)

    def error(self, where: str, message: str) -> None:
        self.findings.append(Finding("error", where, message))

    def warn(self, where: str, message: str) -> None:
        self.findings.append(Finding("warning", where, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["n_errors"], d["n_warnings"] = len(self.errors), len(self.warnings)
        return d

    def format_text(self) -> str:
        scope = "layout only" if self.layout_only else f"layout + content ({self.tiles_checked} tiles' pixels)"
        lines = [f"{self.path}: {self.n_tiles} tiles, checked {scope}"]
        lines += [str(f) for f in sorted(self.findings, key=lambda f: f.level)]
        verdict = "FAILED" if self.errors else "passed"
        lines.append(f"{verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s)")
        return "\n".join(lines)
