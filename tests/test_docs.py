"""The documentation's links resolve and the README stays a front door.

Every relative link `[text](path#anchor)` in README.md, CHANGELOG.md and docs/*.md must name a file
of the repository and, with `#anchor`, a heading of that file (GitHub's anchors: lower case,
punctuation dropped, spaces to hyphens, a repeated heading gets -1, -2, ...).
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def _prose(text: str) -> str:
  """The text without fenced code blocks and inline code (links there are not links)."""
  return _CODE.sub("", _FENCE.sub("", text))


def anchor(heading: str) -> str:
  """GitHub's anchor of a heading's text."""
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # A link's text only.
  text = text.replace("`", "").strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path: pathlib.Path) -> set[str]:
  seen: dict[str, int] = {}
  out = set()
  for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
    a = anchor(heading)
    n = seen.get(a, 0)
    out.add(a if n == 0 else f"{a}-{n}")
    seen[a] = n + 1
  return out


def links(path: pathlib.Path) -> list[str]:
  return [t for t in _LINK.findall(_prose(path.read_text())) if not re.match(r"[a-z]+:", t)]


def test_anchors_follow_github():
  assert anchor("Train on your images (folder)") == "train-on-your-images-folder"
  assert anchor("FSDP: wider projectors") == "fsdp-wider-projectors"
  assert anchor("The `features` probe") == "the-features-probe"


def test_the_walk_finds_links():
  assert "docs/training.md#the-results-table" in links(ROOT / "README.md")
  assert all(p.exists() for p in PAGES) and len(PAGES) >= 8


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
  bad = []
  for target in links(page):
    file, _, fragment = target.partition("#")
    resolved = (page.parent / file).resolve() if file else page
    if not resolved.exists():
      bad.append(f"{target}: no file {resolved}")
    elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
      bad.append(f"{target}: no heading #{fragment} in {resolved.relative_to(ROOT)}")
  assert not bad, f"{page.relative_to(ROOT)}:\n" + "\n".join(bad)


def test_the_readme_is_a_front_door():
  lines = (ROOT / "README.md").read_text().splitlines()
  assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail to docs/"
  # .ci/run reads the test command from the line after the marker's fence.
  i = lines.index("<!-- test-command -->")
  assert lines[i + 1] == "```bash" and "pytest" in lines[i + 2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_tells_how_the_project_was_developed(page):
  if page.name == "CHANGELOG.md":
    return  # History by version belongs there.
  text = page.read_text()
  found = re.findall(r"this round|previous round|earlier rounds|measured and not kept", text, re.I)
  assert not found, f"{page.relative_to(ROOT)}: {found}; state how things are"


def test_the_workdir_files_are_named_by_their_owners_only():
  # docs/architecture.md, "One owner per file format": a file name is spelt once, as a constant
  # of its owner; everyone else uses the constant.
  import ast

  owners = {
    "metrics.jsonl": "metrics_file.py",
    **dict.fromkeys(
      ["model_config.json", "config.txt", "config.json", "pretraining.json", "results.json"],
      "checkpointing.py",
    ),
    "results.md": "checkpointing.py",
  }
  spelt = {}
  for path in sorted((ROOT / "barlow_jax").rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Constant) and node.value in owners:
        spelt.setdefault(node.value, set()).add(str(path.relative_to(ROOT / "barlow_jax")))
  assert spelt == {name: {owner} for name, owner in owners.items()}
