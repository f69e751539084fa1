"""README's code blocks work as written.

Every ```python block runs in a subprocess (in a scratch directory, with pydicom's real
test files and the demo bundle). Every ``edgemed`` command in a ```sh block is checked
against the real parser (the command exists, each option it names is one of that
command's, a listed choice is a valid one), and the commands without placeholders are run
for real, in order, in a scratch directory holding ``my-bundle/`` (a copy of the demo
bundle) and ``CT_small.dcm``.

A block that cannot run here says so on the line before its fence:
``<!-- readme-test: parse-only (why) -->`` (checked, not run) or
``<!-- readme-test: skip (why) -->``. Blocks without a language are diagrams.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import edgemed
from edgemed.cli import _parser

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = re.compile(r"<!--\s*readme-test:\s*(parse-only|skip)\s*(?:\((.*)\))?\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
# A word that stands for something the reader fills in: BUNDLE, INPUT..., DIR.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.\.\.)?$|[\[\]|…]|\.\.\.")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    mode: str  # "run", "parse-only" or "skip"
    reason: str = ""

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang})"


def readme_blocks(text: str | None = None) -> list[Block]:
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        before = next((x for x in reversed(lines[:start]) if x.strip()), "")
        mark = MARK.search(before)
        mode, reason = (mark.group(1), mark.group(2) or "") if mark else ("run", "")
        blocks.append(Block(lang, "\n".join(lines[start + 1 : i]), start + 1, mode, reason))
        i += 1
    return blocks


@dataclass(frozen=True)
class Command:
    block: Block
    env: tuple[str, ...]  # VAR=value words before the command
    words: tuple[str, ...]  # after "edgemed"

    @property
    def concrete(self) -> bool:
        return not any(PLACEHOLDER.search(w) for w in self.words)

    def shell(self) -> str:
        return shlex.join([*self.env, "edgemed", *self.words])

    def __str__(self) -> str:
        return f"{self.block}: edgemed {' '.join(self.words)}"


def _logical_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()  # a comment, never inside a word
        if line:
            out.append(line)
    return out


def shell_commands(block: Block) -> list[Command]:
    commands = []
    for line in _logical_lines(block.text):
        for segment in re.split(r"&&|;", line):
            try:
                words = shlex.split(segment)
            except ValueError:
                words = segment.split()
            at = next((k for k, w in enumerate(words) if Path(w).name == "edgemed"), None)
            if at is None or not all("=" in w and not w.startswith("-") for w in words[:at]):
                continue  # not an edgemed command (pip, python -m venv, pytest)
            commands.append(Command(block, tuple(words[:at]), tuple(words[at + 1 :])))
    return commands


BLOCKS = readme_blocks()
SH_BLOCKS = [b for b in BLOCKS if b.lang in ("sh", "bash", "shell")]
PY_BLOCKS = [b for b in BLOCKS if b.lang == "python"]
COMMANDS = [c for b in SH_BLOCKS for c in shell_commands(b)]


def test_every_block_is_a_known_kind_and_the_checks_have_something_to_check():
    assert {b.lang for b in BLOCKS} <= {"", "sh", "python"}, [str(b) for b in BLOCKS]
    assert PY_BLOCKS and len(COMMANDS) >= 15
    assert any(c.concrete and c.block.mode == "run" for c in COMMANDS)
    skipped = [b for b in BLOCKS if b.mode != "run"]
    assert all(b.reason for b in skipped), "a block that is not run says why"


def test_the_reader_finds_marks_commands_and_placeholders():
    text = (
        "x\n<!-- readme-test: parse-only (GPU) -->\n```sh\n"
        "X=1 edgemed info my-bundle/   # a comment\n"
        "edgemed run INPUT... --out DIR \\\n    [--quiet] && pip install .\n```\n"
        "```python\nprint(1)\n```\n"
    )
    sh, py = readme_blocks(text)
    assert (sh.mode, sh.reason, sh.line, py.mode, py.lang) == (
        "parse-only",
        "GPU",
        3,
        "run",
        "python",
    )
    first, second = shell_commands(sh)
    assert first.env == ("X=1",) and first.words == ("info", "my-bundle/") and first.concrete
    assert second.words == ("run", "INPUT...", "--out", "DIR", "[--quiet]")
    assert not second.concrete


# -- parse level: every edgemed command names real commands, options and choices ------------


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def parse_problems(command: Command) -> list[str]:
    top = _parser()
    subs = _subparsers(top)
    words = [w.strip("[]()") for w in command.words]
    name = next((w for w in words if w and not w.startswith("-")), None)
    if name not in subs:
        return [f"no command {name!r}"]
    command_parser = subs[name]
    if any(isinstance(a, argparse._SubParsersAction) for a in command_parser._actions):
        # A command with actions of its own (edgemed gallery build): that action's options.
        rest = words[words.index(name) + 1 :]
        action = next((w for w in rest if w and not w.startswith("-")), None)
        nested = _subparsers(command_parser)
        if action not in nested:
            return [f"{name} has no action {action!r}"]
        command_parser = nested[action]
    options = {**top._option_string_actions, **command_parser._option_string_actions}
    problems = []
    for k, word in enumerate(words):
        for alternative in word.split("|"):
            flag = alternative.split("=")[0]
            if not re.fullmatch(r"--?[a-z][a-z0-9-]*", flag):
                continue
            action = options.get(flag)
            if action is None:
                problems.append(f"{name} has no option {flag}")
                continue
            following = words[k + 1] if k + 1 < len(words) else ""
            if action.choices and following and not following.startswith("-"):
                listed = [c for c in following.split("|") if c and not c.isupper()]
                problems += [
                    f"{flag} has no choice {c!r}" for c in listed if c not in action.choices
                ]
    return problems


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_shell_command_parses(command):
    if command.block.mode == "skip":
        pytest.skip(command.block.reason)
    assert parse_problems(command) == []


def test_the_parse_check_can_fail():
    fake = Block("sh", "", 0, "run")
    assert parse_problems(Command(fake, (), ("frobnicate",))) == ["no command 'frobnicate'"]
    assert parse_problems(Command(fake, (), ("run", "x", "--nope"))) == ["run has no option --nope"]
    assert parse_problems(Command(fake, (), ("run", "x", "--precision", "fp8|fp16"))) == [
        "--precision has no choice 'fp8'"
    ]


# -- run level -------------------------------------------------------------------------------


@pytest.fixture
def workdir(tmp_path, ct_small_path):
    """A scratch directory with what README's commands name, and ``edgemed`` on PATH
    meaning this checkout's CLI (whatever is installed elsewhere)."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(edgemed.demo_bundle(), work / "my-bundle")
    shutil.copy(ct_small_path, work / "CT_small.dcm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "edgemed"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m edgemed.cli "$@"\n')
    shim.chmod(0o755)
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        "EDGEMED_ORT_THREADS": "1",
    }
    env.pop("EDGEMED_TRUSTED_KEY", None)
    return work, env


RUN_BLOCKS = [
    b for b in SH_BLOCKS if b.mode == "run" and any(c.concrete for c in shell_commands(b))
]


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=str)
def test_shell_block_commands_run(block, workdir):
    work, env = workdir
    for command in shell_commands(block):
        if not command.concrete:
            continue
        proc = subprocess.run(
            ["bash", "-c", command.shell()],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("block", PY_BLOCKS, ids=str)
def test_python_block_runs(block, workdir):
    if block.mode != "run":
        pytest.skip(block.reason)
    work, env = workdir
    proc = subprocess.run(
        [sys.executable, "-c", block.text],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"{block}\n{proc.stdout}\n{proc.stderr}"


# -- the exit code table ---------------------------------------------------------------------

# Each family of codes and the exit code its errors carry (edgemed.errors).
FAMILY_EXIT = {
    "USAGE": 2,
    "INPUT": 3,
    "GALLERY": 3,
    "BUNDLE": 4,
    "BACKEND": 5,
    "DEPENDENCY": 5,
    "ENGINE": 5,
    "GPU": 5,
    "ACCURACY": 6,
    "OUTPUT": 7,
    "EXPORT": 8,
}


def exit_code_table(text: str | None = None) -> dict[str, set[str]]:
    """README's exit code table: the exit column's text -> the codes on that row."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    start = lines.index("### Exit codes and errors")
    rows = {}
    for line in lines[start + 1 :]:
        if line.startswith("### ") or line.startswith("## "):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"\d+(, \d+)*", cells[0]):
            rows[cells[0]] = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[2]))
    return rows


def codes_in_source() -> set[str]:
    """Every error code edgemed and its export stage can raise: the string literals of a
    family's form, and each error class's default."""
    from edgemed import errors

    families = "|".join(FAMILY_EXIT)
    literal = re.compile(rf"[\"']((?:{families})_[A-Z0-9_]+)[\"']")
    root = README.parent
    found = {
        code
        for package in ("edgemed", "export")
        for path in (root / package).rglob("*.py")
        for code in literal.findall(path.read_text(encoding="utf-8"))
    }
    found.discard("INPUT_ERROR_CODES")  # a name in edgemed.io.read's __all__, not a code
    defaults = {
        cls.default_code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.EdgemedError)
    }
    return found | (defaults - {errors.EdgemedError.default_code})


def table_problems(table: dict[str, set[str]], codes: set[str]) -> list[str]:
    listed = {code: exit_ for exit_, row in table.items() for code in row}
    problems = [f"{c} is missing from the table" for c in sorted(codes - set(listed))]
    problems += [f"{c} is in the table but raised nowhere" for c in sorted(set(listed) - codes)]
    for code, exit_ in sorted(listed.items()):
        family_exit = FAMILY_EXIT.get(code.split("_")[0])
        if exit_ != str(family_exit):
            problems.append(f"{code} is on row {exit_}; its errors exit {family_exit}")
    return problems


def test_exit_code_table_lists_every_code_on_its_exit_codes_row():
    from edgemed.errors import EXIT_CODES

    table = exit_code_table()
    assert {str(v) for v in EXIT_CODES.values()} | {"1"} <= set(table)
    assert table_problems(table, codes_in_source()) == []


def test_the_exit_code_check_can_fail():
    text = (
        "### Exit codes and errors\n\n| exit | meaning | error codes |\n|---|---|---|\n"
        "| 3 | input | `INPUT_NOT_FOUND`, `OUTPUT_EXISTS` |\n\n## Next\n| 9 | x | `GPU_OOM` |\n"
    )
    table = exit_code_table(text)
    assert table == {"3": {"INPUT_NOT_FOUND", "OUTPUT_EXISTS"}}
    assert table_problems(table, {"INPUT_NOT_FOUND", "INPUT_TRUNCATED"}) == [
        "INPUT_TRUNCATED is missing from the table",
        "OUTPUT_EXISTS is in the table but raised nowhere",
        "OUTPUT_EXISTS is on row 3; its errors exit 7",
    ]
