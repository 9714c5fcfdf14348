"""The README is a newcomer's entry: it must not drift from the code."""
import re
from pathlib import Path

from normspec.catalogue import README_BEGIN, README_END, catalogue_markdown
from normspec.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_catalogue_table_is_the_generated_one():
    body = README.split(README_BEGIN, 1)[1].split(README_END, 1)[0].strip()
    assert body == catalogue_markdown().strip(), "run: normspec list --markdown, and paste it between the markers"


def test_every_normspec_command_shown_parses():
    parser = build_parser()
    shown = re.findall(r"^\$?\s*(normspec [^\n`|]*?)\s*(?:#.*)?$", README, flags=re.M)
    shown += re.findall(r"&& (normspec [a-z]+)", README)
    assert shown, "the README shows normspec commands"
    for line in shown:
        words = [w for w in line.split()[1:] if "[" not in w and "\\" not in w]
        if not words or words[0] not in parser._subparsers._group_actions[0].choices:
            raise AssertionError(f"README shows an unknown command: {line}")


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [l.split("#")[0].strip() for l in block.strip().splitlines()]
    assert len(commands) == 2
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert commands[1] in ci, ".ci/run must run the README's test command"
