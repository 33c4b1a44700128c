import re

from conftest import REPO


def test_readme_holds_exactly_two_fresh_machine_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    main, tests = blocks
    assert "mmearth-data" in main and "pytest" in tests
    assert tests.index("torch==2.13.0") < tests.index("pip install -e")  # CPU torch pin before anything pulls torch
    assert "README.md" in (REPO / ".ci" / "run").read_text()


def test_readme_is_a_front_page_whose_links_resolve():
    """At most 8 KB (the substance lives in docs/), and every relative link points at a file in the repository."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.encode()) <= 8 * 1024, f"README.md is {len(text.encode())} bytes: move detail into docs/"
    links = [t for t in re.findall(r"\]\(([^)#\s]+)[^)]*\)", text) if "://" not in t]
    assert len(links) >= 10, links
    assert all((REPO / t).is_file() for t in links), [t for t in links if not (REPO / t).is_file()]
