"""MkDocs hook: the performance page shows every benchmark's last table (``benchmarks/results/*.md``), so a new
benchmark's table appears there without editing the page. Tables come in the pipeline's order, then any others by
name."""
from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError

MARKER = "<!-- benchmark-results -->"
ORDER = ("bench_sampler", "bench_export", "bench_export_stac", "bench_gee", "bench_build", "bench_pack",
         "bench_loader", "bench_stream", "bench_download", "bench_model", "bench_pretrain")


def results_dir(config) -> Path:
    return Path(config.config_file_path).parent / "benchmarks" / "results"


def tables(results: Path) -> list[Path]:
    """The result tables in the order the page shows them."""
    found = {p.stem: p for p in results.glob("*.md")}
    return [found[n] for n in ORDER if n in found] + [found[n] for n in sorted(set(found) - set(ORDER))]


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    found = tables(results_dir(config))
    if not found:
        raise PluginError(f"{page.file.src_path}: no benchmark results in {results_dir(config)}: run a benchmark")
    return markdown.replace(MARKER, "\n\n".join(p.read_text(encoding="utf-8").strip() for p in found))
