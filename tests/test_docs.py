"""The documents travel with the repository: every § the project cites is a section of docs/paper.md,
every relative link in the README and docs/ resolves, and the README stays short and names every package."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "docs" / "paper.md"
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md"))]
# What users read or run: the code, the params files, the README and docs/.
CITING = [*ROOT.glob("alexnet/**/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("flows/*.py"),
          *ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*"), ROOT / "params.yaml",
          *ROOT.glob("params/*.yaml"), *MARKDOWN]
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")
# [text](target) or [text](target "title"); images too. Targets with spaces are not used here.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")


def test_every_cited_section_is_in_docs_paper():
    headings = set(SECTION.findall("\n".join(line for line in PAPER.read_text().splitlines()
                                             if line.startswith("## "))))
    missing = {}
    for path in CITING:
        for number in SECTION.findall(path.read_text()):
            # §3 is covered by §3.1 ... §3.5
            if not any(h == number or h.startswith(number + ".") for h in headings):
                missing.setdefault(f"§{number}", []).append(path.relative_to(ROOT).as_posix())
    assert not missing, f"cited but not a section of docs/paper.md: {missing}"


def test_nothing_cites_the_paper_notes_outside_the_repository():
    citing = [p.relative_to(ROOT).as_posix() for p in CITING if "PAPER.md" in p.read_text()]
    assert not citing, f"cite docs/paper.md instead of PAPER.md in {citing}"


def _prose(text: str) -> str:
    """The text outside fenced code blocks and indented (4-space) code blocks, where links are live."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced and not line.startswith("    "):
            kept.append(line)
    return "\n".join(kept)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, repeated headings numbered as GitHub does (-1, -2)."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_relative_links_resolve():
    broken = []
    for doc in MARKDOWN:
        for target in LINK.findall(_prose(doc.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:, ...
                continue
            file_part, _, anchor = target.partition("#")
            dest = (doc.parent / file_part).resolve() if file_part else doc
            where = f"{doc.relative_to(ROOT).as_posix()}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT).as_posix()}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_readme_is_short_and_names_every_package():
    lines = README.read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; keep it under 250 (details go to docs/)"
    text = "\n".join(lines)
    packages = sorted(p.parent.name for p in ROOT.glob("alexnet/*/__init__.py"))
    unnamed = [name for name in packages if f"alexnet/{name}" not in text]
    assert not unnamed, f"README.md's Architecture does not name alexnet/{{{', '.join(unnamed)}}}"
