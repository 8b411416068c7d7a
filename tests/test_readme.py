"""README.md's code blocks work as written.

Every ```python block runs on its own in a fresh interpreter (from the repository root, CPU).
A block that cannot run here (it needs a download) must be marked on the line right before its
fence with ``<!-- readme-test: needs-download -->``; it is then reported as skipped with that
reason, never dropped silently. In ```bash blocks every ``make TARGET`` must be a Makefile
target and every ``gpjax SUBCOMMAND`` (or ``python -m gpjax SUBCOMMAND``) a real subcommand
(``--help`` exits 0). Blocks added to the README later are picked up automatically.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from conftest import SUITE_XLA_FLAGS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- readme-test: needs-download -->"


class Block(NamedTuple):
    lang: str
    line: int  # 1-based line of the opening fence
    code: str
    marked: bool


def blocks(text: str) -> list[Block]:
    """Fenced code blocks of a Markdown text, with their language and marker."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, indent, body = i, len(m.group(1)), []
        i += 1
        while i < len(lines) and not re.match(r"^\s*```\s*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        marked = start > 0 and lines[start - 1].strip() == MARK
        out.append(Block(m.group(2).lower(), start + 1, "\n".join(body) + "\n", marked))
        i += 1
    return out


_BLOCKS = blocks(README.read_text())
_PYTHON = [b for b in _BLOCKS if b.lang in ("python", "py")]
_BASH = [b for b in _BLOCKS if b.lang in ("bash", "sh", "shell", "console")]


def test_readme_parser_finds_the_blocks():
    # The parser itself: a marked block, an indented one, languages; and README has some.
    sample = f"text\n```python\nx = 1\n```\n{MARK}\n```python\nimport nothing\n```\n" \
             "  ```bash\n  make test\n  ```\n"
    got = blocks(sample)
    assert [(b.lang, b.line, b.marked) for b in got] == [("python", 2, False),
                                                         ("python", 6, True), ("bash", 9, False)]
    assert got[2].code == "make test\n"
    assert _PYTHON and _BASH


def _env() -> dict[str, str]:
    # A user's environment, except for the suite's compilation cache and XLA optimisation
    # level (speed only).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))
           or k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    return {**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), "XLA_FLAGS": SUITE_XLA_FLAGS}


@pytest.mark.parametrize("block", _PYTHON, ids=[f"README.md:{b.line}" for b in _PYTHON])
def test_readme_python_block_runs(block):
    if block.marked:
        pytest.skip(f"README.md:{block.line} is marked as needing a download ({MARK})")
    out = subprocess.run([sys.executable, "-c", block.code], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"README.md:{block.line} failed:\n{out.stderr[-3000:]}"


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {t for line in text.splitlines()
            if (m := re.match(r"^([A-Za-z0-9_.\-/ ]+):(?!=)", line))
            for t in m.group(1).split()}


def _commands(code: str) -> list[list[str]]:
    """Shell words of each command in a bash block (comments and prompts dropped)."""
    out = []
    for line in code.splitlines():
        line = re.sub(r"^\s*\$\s+", "", line)
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        cmd: list[str] = []
        for w in words + [";"]:
            if w in (";", "&&", "||", "|"):
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
    return out


def _references(cmds: list[list[str]]) -> tuple[list[str], list[str]]:
    makes, subs = [], []
    for cmd in cmds:
        while cmd and re.match(r"^\w+=", cmd[0]):  # VAR=value make ...
            cmd = cmd[1:]
        if cmd[:1] == ["make"]:
            makes += [w for w in cmd[1:] if not w.startswith("-") and "=" not in w]
        for i, w in enumerate(cmd):
            is_cli = w == "gpjax" and i == 0 or (w == "gpjax" and cmd[i - 1:i] == ["-m"])
            if is_cli and i + 1 < len(cmd) and not cmd[i + 1].startswith("-"):
                subs.append(cmd[i + 1])
    return makes, subs


def test_bash_reference_parser():
    cmds = _commands("make demo ARGS=--full   # comment\n$ gpjax run x && python -m gpjax list\n"
                     "pip install gpjax\n")
    assert _references(cmds) == (["demo"], ["run", "list"])


@pytest.mark.parametrize("block", _BASH, ids=[f"README.md:{b.line}" for b in _BASH])
def test_readme_bash_block_names_real_targets_and_subcommands(block):
    makes, subs = _references(_commands(block.code))
    targets = _make_targets()
    missing = [t for t in makes if t not in targets]
    assert not missing, f"README.md:{block.line}: no Makefile target {missing}"
    # One interpreter for all of them (each start imports JAX): `gpjax SUB --help` per name.
    script = ("import sys\nfrom gpjax.cli import main\ncodes = []\n"
              "for sub in sys.argv[1:]:\n    try:\n        main([sub, '--help'])\n"
              "    except SystemExit as e:\n        codes.append(f'{sub}={e.code}')\n"
              "print(' '.join(codes))\n")
    subs = list(dict.fromkeys(subs))
    out = subprocess.run([sys.executable, "-c", script, *subs], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=300)
    codes = dict(c.split("=") for c in out.stdout.split()[-len(subs):]) if subs else {}
    for sub in subs:
        assert codes.get(sub) == "0", (f"README.md:{block.line}: `gpjax {sub} --help` exited "
                                       f"{codes.get(sub)}: {out.stderr[-1000:]}")


def test_readme_tables_agree_with_their_results_files():
    """Every generated table of the README is what its committed results file gives now."""
    from experiments import readme_tables
    found = readme_tables.blocks(README.read_text())
    assert found, "the README has generated tables"
    for b in found:
        assert b.held == b.wanted, f"stale table from {b.source}: run python -m " \
                                   "experiments.readme_tables"


def test_readme_tables_finds_and_remakes_a_stale_block(tmp_path, monkeypatch):
    from experiments import readme_tables
    src = tmp_path / "r.json"
    src.write_text('{"a": 1}')
    monkeypatch.setattr(readme_tables, "ROOT", tmp_path)
    text = f"x\n<!-- table json:dumps {src.name} -->\nold\n<!-- /table -->\ny\n"
    (b,) = readme_tables.blocks(text)
    assert b.held == "old\n" and b.wanted == '{"a": 1}\n'
    fixed = readme_tables.regenerate(text)
    assert fixed == f'x\n<!-- table json:dumps {src.name} -->\n{{"a": 1}}\n<!-- /table -->\ny\n'
    assert [b.held == b.wanted for b in readme_tables.blocks(fixed)] == [True]
    md = tmp_path / "README.md"
    md.write_text(text)
    assert readme_tables.main([str(md), "--check"]) == 1 and md.read_text() == text
    assert readme_tables.main([str(md)]) == 0 and md.read_text() == fixed
