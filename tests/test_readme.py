"""The README and docs/ are a newcomer's entry: they must not drift from the code.

Every `normspec ...` command they show is parsed by the real argument parser (an option that
does not exist fails), every relative link must reach an existing file (and heading, for an
anchor), and every repository path named in code spans must exist.
"""
from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from normspec.catalogue import README_BEGIN, README_END, catalogue_markdown
from normspec.cli import build_parser
from normspec.properties import PROPERTIES
from normspec.registry import norms

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)*)`")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """Markdown without fenced code blocks (links and spans in code are not links)."""
    return FENCE.sub("", text)


# ---------------------------------------------------------------------------- commands shown

def _segments(text: str) -> list[str]:
    """Shell command segments: split at &&, ;, and pipes (but not at a synopsis' `a\\|b`)."""
    text = text.replace("\\|", "\x00")
    parts = re.split(r"&&|;|(?<![\x00])\|(?![\x00])", text)
    return [p.replace("\x00", "|").strip() for p in parts]


def _synopsis_variants(words: list[str]) -> list[list[str]]:
    """`[--profile dev|ci|thorough]` -> one command per alternative, brackets dropped."""
    words = [w.strip("[]") for w in words if w.strip("[]")]
    choices = [w.split("|") if "|" in w else [w] for w in words]
    return [list(c) for c in itertools.product(*choices)]


def shown_commands() -> list[tuple[str, str]]:
    """(where, command) for every `normspec ...` in code blocks and code spans of README and docs/."""
    found = []
    for path in DOCS:
        text = path.read_text()
        lines = [line for block in FENCE.findall(text) for line in block.splitlines()]
        lines += re.findall(r"^ {4,}(\$? ?normspec .*)$", _prose(text), re.M)  # indented code blocks
        lines += [" ".join(span.split()) for span in SPAN.findall(_prose(text))]
        for line in lines:
            line = re.sub(r"^\$\s*", "", line.strip())
            line = re.sub(r"\s+#.*$", "", line)
            for seg in _segments(line):
                words = seg.split()
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]  # environment assignments
                if words and words[0] == "normspec" and len(words) > 1:
                    found.append((_rel(path), " ".join(words)))
    return found


SHOWN = shown_commands()


def test_commands_are_found():
    """The collector itself sees the commands the Quick start and the three jobs show."""
    commands = {c for _, c in SHOWN}
    assert "normspec check" in commands
    assert any(c.startswith("normspec validate ") for c in commands)
    assert any(c.startswith("normspec bench --norm") for c in commands)


def _names(value) -> list[str]:
    """Names from an option given once (a string) or repeated (a list), comma-separated either way."""
    items = [value] if isinstance(value, str) else value or []
    return [n for item in items for n in item.split(",") if n]


@pytest.mark.parametrize("where,command", SHOWN, ids=[f"{w}:{c}" for w, c in SHOWN])
def test_every_normspec_command_shown_parses(where, command):
    parser = build_parser()
    for words in _synopsis_variants(shlex.split(command)[1:]):
        try:
            args = parser.parse_args(words)
        except SystemExit as exc:
            raise AssertionError(f"{where} shows a command normspec rejects: {' '.join(words)} "
                                 f"(exit {exc.code})") from None
        for name in _names(getattr(args, "norm", None)):
            if re.fullmatch(r"[A-Z.]+", name):
                continue  # a synopsis placeholder (N,..)
            assert name in norms(), f"{where}: {command} names an unknown norm {name!r}"
        for name in _names(getattr(args, "property", None)):
            if re.fullmatch(r"[A-Z.]+", name):
                continue
            assert name in PROPERTIES, f"{where}: {command} names an unknown property {name!r}"


def test_a_wrong_option_is_caught():
    """The check above is able to fail: argparse exits on an option that does not exist."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["check", "--no-such-option"])
    assert _synopsis_variants("check [--profile dev|ci] [--json FILE]".split()) == [
        ["check", "--profile", "dev", "--json", "FILE"], ["check", "--profile", "ci", "--json", "FILE"]]


# ---------------------------------------------------------------------------- links and paths

def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+)$", _prose(path.read_text()), re.M)}


def relative_links(path: Path) -> list[str]:
    text = SPAN.sub("", _prose(path.read_text()))
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto:


LINKS = [(path, t) for path in DOCS for t in relative_links(path)]


def test_links_are_found():
    assert any(t.startswith("#") for p, t in LINKS if p.name == "README.md" and p.parent == ROOT)
    assert any(t.startswith("docs/") for p, t in LINKS)


@pytest.mark.parametrize("path,target", LINKS, ids=[f"{_rel(p)}->{t}" for p, t in LINKS])
def test_every_relative_link_resolves(path, target):
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    assert dest.exists(), f"{_rel(path)} links to {target}: no such file"
    if anchor:
        assert dest.suffix == ".md", f"{_rel(path)} links to an anchor in a non-Markdown file: {target}"
        assert anchor in anchors(dest), f"{_rel(path)} links to {target}: no such heading in {_rel(dest)}"


REPO_DIRS = ("spec/", "impls/", "properties/", "normspec/", "benchmarks/", "tests/", "docs/", ".ci/")


def named_paths() -> list[tuple[Path, str]]:
    """Repository paths written as code spans (`properties/tolerance.py`); placeholders excluded."""
    out = []
    for path in DOCS:
        for span in SPAN.findall(_prose(path.read_text())):
            span = span.strip()
            if span.startswith(REPO_DIRS) and re.fullmatch(r"[\w./-]+", span):
                out.append((path, span))
    return out


@pytest.mark.parametrize("path,named", named_paths(), ids=[f"{_rel(p)}:{n}" for p, n in named_paths()])
def test_every_repository_path_named_exists(path, named):
    assert (ROOT / named).exists() or (path.parent / named).exists(), f"{_rel(path)} names {named}: not in the repo"


def test_anchor_slugs_follow_github():
    assert github_anchor("Findings: where PyTorch deviates") == "findings-where-pytorch-deviates"
    assert github_anchor("asv: speed over commits") == "asv-speed-over-commits"
    assert github_anchor("`numpy:fast` kernels") == "numpyfast-kernels"


# ---------------------------------------------------------------------------- catalogue, quick start

def test_catalogue_table_is_the_generated_one():
    body = README.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert body == catalogue_markdown().strip(), "run: normspec list --markdown, and paste it between the markers"


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["pip install -e . && normspec check", "pip install -e '.[test]' && pytest"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must run the README's test command"
