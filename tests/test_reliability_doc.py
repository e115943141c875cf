"""docs/reliability.md: every fault row names tests that exist (and so run with the suite)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_row_points_at_an_existing_test():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| fault")
            and not line.startswith("| ---")]
    assert len(rows) >= 40
    for row in rows:
        refs = re.findall(r"`(tests/\w+\.py)::(\w+)(?:\[([^\]]+)\])?`", row.split(" | ")[-1])
        assert refs, f"no test named in: {row}"
        for path, name, param in refs:
            source = (ROOT / path).read_text()
            assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"
            assert param is None or param == "" or param in source or param in ("True", "False"), (path, name, param)
    assert "tests/test_reliability_doc.py" in doc
