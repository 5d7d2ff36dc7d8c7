"""What the code cites lives in the repository, and every citation points at a real section.

Docstrings and comments cite the project's documentation as ``docs/<file>.md §N`` (for
example the method description ``docs/method.md`` and the design notes ``docs/design.md``).
Two checks keep those citations honest:

* no file of the repository names the developers' notes that live outside it (the old spec
  and design files beside the checkout, or any path through the parent folder's ``shared/``);
* every ``docs/<file>.md §N`` citation names an existing file with a heading that contains
  ``§N``. Ranges and lists are checked item by item: ``§2–§5`` needs §2, §3, §4 and §5;
  ``§13.1–2`` needs §13.1 and §13.2; ``§4 and §5`` needs both.

Files are the ones git knows (tracked, plus new files not ignored), read as text. No torch.
"""

from __future__ import annotations

import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()

#: Text files whose citations are checked (code, docs, configs, CI definitions).
TEXT_SUFFIXES = {".py", ".md", ".json", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".txt"}

#: Names of documents outside the repository: the old spec file under any spelling, the old
#: design notes (``<notes>.md``, ``<notes> §3``, ``<notes>, section 4``) and the parent folder's shared/.
OUTSIDE = re.compile(r"SNP_SPEC|\bDESIGN(?:\.md\b|\s*§|,?\s+sections?\b)|\.\./shared\b")

NUM = r"\d+(?:\.\d+)*"
#: One cited item: ``§7.3``, or a range ``§2–§5`` / ``§13.1–2`` / ``§3-4``.
ITEM = re.compile(rf"§(?P<start>{NUM})(?:\s*[–—-]\s*§?(?P<end>{NUM}))?")
_ITEM_TEXT = rf"§{NUM}(?:\s*[–—-]\s*§?{NUM})?"
#: A citation: the doc's path, then one or more items separated by spaces, commas, "and"/"or",
#: and the ``#`` of a comment continued on the next line.
CITATION = re.compile(
    rf"(?P<file>\bdocs/[\w./-]+\.md)`?(?P<items>(?:(?:\s|#|,|\band\b|\bor\b)*{_ITEM_TEXT})+)"
)
HEADING_NUMBER = re.compile(rf"§({NUM})")


def repo_files() -> list[Path]:
    """Every text file git knows in the checkout: tracked ones and new ones not ignored."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"git ls-files failed in {ROOT}: {exc}")
    paths = sorted({ROOT / name for name in out.decode().split("\0") if name})
    return [p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file()]


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def where(path: Path, text: str, offset: int) -> str:
    line_no = text.count("\n", 0, offset) + 1
    line = text.split("\n")[line_no - 1].strip()
    return f"{path.relative_to(ROOT)}:{line_no}: {line}"


@lru_cache(maxsize=None)
def heading_numbers(doc: Path) -> frozenset[str]:
    """The § numbers in the markdown headings of `doc` (fenced code blocks skipped)."""
    numbers, fenced = set(), False
    for line in read(doc).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            numbers.update(HEADING_NUMBER.findall(line))
    return frozenset(numbers)


def expand(start: str, end: str | None) -> list[str]:
    """The section numbers one cited item needs: ``("13.1", "2")`` -> 13.1, 13.2; ``("2", "5")`` -> 2..5."""
    if end is None:
        return [start]
    first = start.split(".")
    last = end.split(".")
    if len(last) < len(first):  # §13.1–2: the end replaces the last components
        last = first[: len(first) - len(last)] + last
    if first[:-1] == last[:-1] and int(first[-1]) <= int(last[-1]):
        prefix = first[:-1]
        return [".".join(prefix + [str(n)]) for n in range(int(first[-1]), int(last[-1]) + 1)]
    return [start, ".".join(last)]


def citations(text: str) -> list[tuple[int, str, list[str]]]:
    """(offset, doc path, section numbers) for every ``docs/<file>.md §N`` citation in `text`."""
    found = []
    for m in CITATION.finditer(text):
        numbers = [n for item in ITEM.finditer(m["items"]) for n in expand(item["start"], item["end"])]
        found.append((m.start(), m["file"], numbers))
    return found


def test_expand_and_parse_citation_forms():
    assert expand("7.3", None) == ["7.3"]
    assert expand("2", "5") == ["2", "3", "4", "5"]
    assert expand("13.1", "2") == ["13.1", "13.2"]
    assert expand("2.3", "3.1") == ["2.3", "3.1"]
    text = ("see docs/method.md §2–§5 and docs/design.md §4 and §5; `docs/method.md` §13.1–2,\n"
            "    # docs/method.md\n    # §7.3) and docs/x.md section 4")
    assert [(f, n) for _, f, n in citations(text)] == [
        ("docs/method.md", ["2", "3", "4", "5"]), ("docs/design.md", ["4", "5"]),
        ("docs/method.md", ["13.1", "13.2"]), ("docs/method.md", ["7.3"]),
    ]
    assert OUTSIDE.search("see SNP_SPEC.md §2") and OUTSIDE.search("DESIGN, section 4")
    assert OUTSIDE.search("DESIGN §3") and OUTSIDE.search("`../shared/DESIGN.md`")
    assert not OUTSIDE.search("docs/design.md §4") and not OUTSIDE.search("DESIGN_NOTES = 1")


def test_no_reference_to_documents_outside_the_repository():
    offenders = []
    for path in repo_files():
        if path == THIS:
            continue
        text = read(path)
        lines = {text.count("\n", 0, m.start()): m.start() for m in OUTSIDE.finditer(text)}  # one per line
        offenders += [where(path, text, offset) for offset in lines.values()]
    assert not offenders, (
        f"{len(offenders)} reference(s) to notes outside the repository; cite docs/method.md or "
        "docs/design.md instead:\n" + "\n".join(offenders)
    )


def test_every_docs_citation_points_at_a_heading():
    broken = []
    for path in repo_files():
        if path == THIS:  # its examples above are not citations
            continue
        text = read(path)
        for offset, doc, numbers in citations(text):
            target = ROOT / doc
            if not target.is_file():
                broken.append(f"{where(path, text, offset)}  ->  {doc} does not exist")
                continue
            missing = [n for n in numbers if n not in heading_numbers(target)]
            if missing:
                broken.append(f"{where(path, text, offset)}  ->  no heading §{', §'.join(missing)} in {doc}")
    assert not broken, "citations of missing sections:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", ["docs/method.md", "docs/design.md"])
def test_section_headings_are_unique(doc):
    path = ROOT / doc
    assert path.is_file(), f"{doc} is missing"
    seen: dict[str, int] = {}
    fenced = False
    for line in read(path).splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            for number in HEADING_NUMBER.findall(line):
                seen[number] = seen.get(number, 0) + 1
    assert seen, f"{doc} has no § headings"
    assert not [n for n, count in seen.items() if count > 1], f"§ numbers used by two headings in {doc}: {seen}"
