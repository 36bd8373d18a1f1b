"""The documents travel with the repository: every § the project cites is a section of docs/paper.md."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "docs" / "paper.md"
# What users read or run: the code, the params files and the README.
CITING = [*ROOT.glob("alexnet/*.py"), *ROOT.glob("stages/*.py"), *ROOT.glob("flows/*.py"),
          *ROOT.glob("benchmarks/*.py"), *ROOT.glob("scripts/*"), ROOT / "README.md", ROOT / "params.yaml",
          *ROOT.glob("params/*.yaml")]
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")


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
