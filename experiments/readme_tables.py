"""README tables made from committed results files, never typed by hand.

A generated block in a Markdown file is

    <!-- table experiments.demo:markdown experiments/results/demo/results.json -->
    ...the text that function returns for that JSON file...
    <!-- /table -->

where the function (``module:name``) takes the parsed JSON and returns Markdown.

    python -m experiments.readme_tables            # rewrite the blocks of README.md
    python -m experiments.readme_tables --check    # exit 1 naming every stale block

``tests/test_readme.py`` runs the check, so a table on the front page always agrees with the
file that made it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"(<!-- table (\S+) (\S+) -->\n)(.*?)(<!-- /table -->)", re.S)


class Block(NamedTuple):
    """One generated block: where it is, what made it, what it holds and should hold."""

    function: str
    source: str
    held: str
    wanted: str


def _render(function: str, source: str) -> str:
    module, _, name = function.partition(":")
    fn = getattr(importlib.import_module(module), name)
    return fn(json.loads((ROOT / source).read_text())).rstrip("\n") + "\n"


def blocks(text: str) -> list[Block]:
    """Every generated block of a Markdown text, with the text its source gives now."""
    return [Block(m.group(2), m.group(3), m.group(4), _render(m.group(2), m.group(3)))
            for m in _BLOCK.finditer(text)]


def regenerate(text: str) -> str:
    """``text`` with every generated block remade from its source."""
    return _BLOCK.sub(lambda m: m.group(1) + _render(m.group(2), m.group(3)) + m.group(5), text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", default=[str(ROOT / "README.md")])
    ap.add_argument("--check", action="store_true", help="only report stale blocks (exit 1)")
    args = ap.parse_args(argv)
    stale = []
    for f in map(Path, args.files):
        text = f.read_text()
        stale += [f"{f}: the table from {b.source} ({b.function}) is stale"
                  for b in blocks(text) if b.held != b.wanted]
        if not args.check:
            f.write_text(regenerate(text))
    if args.check and stale:
        print("\n".join(stale) + "\nFix: python -m experiments.readme_tables", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
