import re

from conftest import REPO


def test_readme_holds_exactly_two_fresh_machine_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2
    main, tests = blocks
    assert "mmearth-data" in main and "pytest" in tests
    assert tests.index("torch==2.13.0") < tests.index("pip install -e")  # CPU torch pin before anything pulls torch
    assert "README.md" in (REPO / ".ci" / "run").read_text()
