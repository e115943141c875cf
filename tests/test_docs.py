"""README.md and docs/*.md: short front page, working links, and commands that exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", ROOT / "figures" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _code(text: str) -> str:
    """The text of every fenced block and inline code span: where commands are written."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(fenced + inline)


def _makefile_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))


def test_readme_is_a_front_page():
    assert len(README.read_text().splitlines()) <= 160


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target}, which does not exist"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_make_target_exists(page):
    targets = _makefile_targets()
    named = re.findall(r"(?<![\w-])make ([a-z][\w-]*)", _code(page.read_text()))
    for name in named:
        assert name in targets, f"{page.name}: `make {name}` is not a Makefile target"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_helpers_module_command_exists(page):
    for name in re.findall(r"python -m helpers\.([\w.]+\w)", page.read_text()):
        source = ROOT / "helpers" / f"{name.replace('.', '/')}.py"
        assert source.is_file(), f"{page.name}: python -m helpers.{name}: no {source.relative_to(ROOT)}"
        assert re.search(r"^def main\(", source.read_text(), re.M), f"helpers/{name}.py has no main()"
        assert '__name__ == "__main__"' in source.read_text(), f"helpers/{name}.py does not run as a module"


def test_the_commands_were_found():
    """The checks above look at something: the README names make targets and helpers commands."""
    text = README.read_text()
    assert {"reproduce", "test", "data"} <= set(re.findall(r"(?<![\w-])make ([a-z][\w-]*)", _code(text)))
    assert re.search(r"python -m helpers\.evaluate", text)


def test_no_placeholder_is_left():
    left = [f"{p.relative_to(ROOT)}:{n}" for p in PAGES for n, line in enumerate(p.read_text().splitlines(), 1)
            if "<<TBD" in line]
    assert not left, "placeholders left: " + ", ".join(left)
