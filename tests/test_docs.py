"""docs/REFERENCE.md is the one description of the release that the code cites.

Every "docs/REFERENCE.md section N" in the repository's Python files and docs must name a heading that
exists, and nothing may cite a copy of the facts outside the repository (a user's checkout has only
docs/REFERENCE.md).
"""

import pathlib
import re

_SOURCE_DIRS = ("data", "models", "training", "tools", "tests", "docs")
# "docs/REFERENCE.md section 3", "... sections 3-4", "... sections 3 and 4", also across a line break or
# a comment's "#".
_CITATION = re.compile(r"docs/REFERENCE\.md[\s#]*sections?\s+(\d+(?:\s*(?:-|,|and)\s*\d+)*)")
# Any other way of naming the facts: a bare "REFERENCE.md" (not under docs/), the old "REFERENCE section N"
# or "REFERENCE N", or the path of the shared copy that the project was written from.
_STRAY = re.compile(r"(?<!docs/)REFERENCE\.md|\bREFERENCE\s+(?:sections?\s+)?\d|shared/REFERENCE")


def _cited_sections(text: str) -> set[int]:
    sections = set()
    for match in _CITATION.finditer(text):
        numbers = [int(n) for n in re.findall(r"\d+", match.group(1))]
        if "-" in match.group(1):  # a range: every section in it
            numbers = list(range(min(numbers), max(numbers) + 1))
        sections.update(numbers)
    return sections


def _files(repo_root: pathlib.Path) -> list[pathlib.Path]:
    files = [*repo_root.glob("*.py"), *repo_root.glob("*.md")]
    for folder in _SOURCE_DIRS:
        files += (repo_root / folder).rglob("*.py")
        files += (repo_root / folder).rglob("*.md")
    return sorted(set(files) - {pathlib.Path(__file__).resolve()})


def _headings(repo_root: pathlib.Path) -> set[int]:
    text = (repo_root / "docs" / "REFERENCE.md").read_text(encoding="utf-8")
    return {int(n) for n in re.findall(r"^## (\d+)\. \S", text, flags=re.MULTILINE)}


def test_citation_parser_reads_every_form_used():
    assert _cited_sections("(docs/REFERENCE.md section 6)") == {6}
    assert _cited_sections("the release (docs/REFERENCE.md sections 3-5): x") == {3, 4, 5}
    assert _cited_sections("docs/REFERENCE.md sections 2 and 4, docs/REFERENCE.md section 8") == {2, 4, 8}
    assert _cited_sections("as reported (docs/REFERENCE.md\n    section 7). For") == {7}
    assert _cited_sections("# see docs/REFERENCE.md\n# section 1") == {1}
    assert _cited_sections("docs/REFERENCE.md has the facts") == set()
    for stray in (
        "(REFERENCE section 3)",
        "REFERENCE.md: the confidences",
        "REFERENCE 6 gives",
        "shared/REFERENCE",
    ):
        assert _STRAY.search(stray), stray
    assert not _STRAY.search("(docs/REFERENCE.md section 3) REFERENCE_DIR MLIMAGES_REFERENCE_DIR")


def test_reference_has_numbered_sections(repo_root):
    assert _headings(repo_root) == set(range(1, 9))


def test_every_cited_section_exists(repo_root):
    headings = _headings(repo_root)
    cited = {}
    for path in _files(repo_root):
        for section in _cited_sections(path.read_text(encoding="utf-8")):
            cited.setdefault(section, []).append(str(path.relative_to(repo_root)))
    assert cited, "no file cites docs/REFERENCE.md: the citation pattern no longer matches the code"
    missing = {section: files for section, files in cited.items() if section not in headings}
    assert not missing, f"cited sections without a heading in docs/REFERENCE.md: {missing}"


def test_nothing_cites_the_facts_elsewhere(repo_root):
    stray = []
    for path in _files(repo_root):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _STRAY.search(line):
                stray.append(f"{path.relative_to(repo_root)}:{number}: {line.strip()}")
    assert not stray, "cite docs/REFERENCE.md section N instead:\n" + "\n".join(stray)


def _flag_files(repo_root: pathlib.Path) -> list[pathlib.Path]:
    """Every module that defines command-line flags, except the benchmark tool (its help names sizes)."""
    files = [
        *repo_root.glob("*.py"),
        *(p for d in ("data", "training", "tools") for p in (repo_root / d).glob("*.py")),
    ]
    return [
        p for p in sorted(files) if "DEFINE_" in p.read_text(encoding="utf-8") and p.name != "benchmark.py"
    ]


def test_flag_help_points_to_benchmarks_instead_of_quoting_figures(repo_root):
    """--help is read long after a measurement was taken: figures live with their commands in BENCHMARKS."""
    measured = re.compile(
        r"about \d+(?:\.\d+)? ?(?:%|x\b|ms)|~ ?\d+(?:\.\d+)?x\b|\d+(?:\.\d+)?x (?:faster|slower)|\d ms per"
    )
    files = _flag_files(repo_root)
    assert any(p.name == "cli.py" for p in files) and any(p.name == "tfrecord.py" for p in files)
    figures = [
        f"{p.relative_to(repo_root)}: {m.group(0)}" for p in files for m in measured.finditer(p.read_text())
    ]
    assert not figures, f"measured figures belong in docs/BENCHMARKS.md: {figures}"
