"""The documentation's relative links resolve, and the README stays short.

Every ``[text](target)`` and ``![alt](target)`` in README.md and docs/**/*.md
that is not a web address must name a file or folder of the repository,
relative to the page; a ``#fragment`` on a Markdown target must name one of its
headings (GitHub's anchor rules). Links inside code blocks and code spans are
not links and are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")     # http:, https:, mailto:, ...


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def links(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link outside code blocks and code spans."""
    out, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        ref = _REFERENCE.match(line)
        if ref:
            out.append((number, ref.group(1)))
            continue
        prose = _CODE_SPAN.sub("", line)
        out.extend((number, m.group(1)) for m in _INLINE.finditer(prose))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())   # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page, with GitHub's -1, -2 suffixes for repeats."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken(page: Path) -> list[str]:
    """The page's relative links that do not resolve, as 'line: target (why)'."""
    problems = []
    for number, target in links(page.read_text(encoding="utf-8")):
        if _EXTERNAL.match(target):
            continue
        path, _, fragment = target.partition("#")
        dest = page if not path else (page.parent / path)
        if not dest.exists():
            problems.append(f"{number}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            problems.append(f"{number}: {target} (no heading with that anchor)")
    return problems


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    problems = broken(page)
    assert not problems, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(problems)


def test_readme_links_to_the_docs():
    targets = {t for _, t in links((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert {"docs/usage.md", "docs/testing.md", "docs/model.md"} <= targets


def test_readme_is_at_most_300_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; keep it to {README_MAX_LINES}"


def test_checker_finds_broken_links_and_skips_code(tmp_path: Path):
    (tmp_path / "there.md").write_text("# A heading\n\n## Options (`--x`)\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok too](there.md#a-heading) [anchor](there.md#options---x)\n"
        "[gone](missing.md) [bad anchor](there.md#nope) [web](https://example.org/x)\n"
        "`[not a link](nowhere.md)`\n"
        "```\n[also not](nowhere.md)\n```\n"
        "[ref]: missing-too.md\n",
        encoding="utf-8")
    assert broken(page) == ["2: missing.md (no such file)", "2: there.md#nope (no heading with that anchor)",
                            "7: missing-too.md (no such file)"]


def test_ci_runs_the_readme_test_command_in_a_fresh_venv():
    """``.ci/run`` builds its own venv from scratch and runs exactly the README's test command."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    (command,) = [line for line in readme if line.startswith("python3 -m venv") and "pytest" in line]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert command in ci, f".ci/run must run the README's test command: {command}"
    assert ci.index("rm -rf .venv") < ci.index(command)


def test_readme_api_example_is_the_example_program():
    """README's API section shows examples/directreduce_vs_ring.py as it is (tests/e2e runs the file)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The Python API"):]
    block = section[section.index("```python\n") + len("```python\n"):]
    block = block[:block.index("```\n")]
    program = (ROOT / "examples" / "directreduce_vs_ring.py").read_text(encoding="utf-8")
    assert block.strip("\n") == program[program.index('"""', 3) + 3:].strip("\n")
