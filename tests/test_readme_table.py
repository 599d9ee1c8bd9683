"""The README's bad-input table cannot drift from the tests: every row names a test that exists, and every
test of test_cli_bad_input.py is a row."""

from __future__ import annotations

import ast
import os
import re

TESTS = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(os.path.dirname(TESTS), "README.md")


def table_rows() -> list[tuple[str, str, str]]:
    """(input, what happens, test) of each row of the table under "### Bad input"."""
    section = open(README).read().split("### Bad input", 1)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("| input |"))
    cells = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]
    return [tuple(row) for row in cells]


def defined_tests(file: str) -> set[str]:
    tree = ast.parse(open(os.path.join(TESTS, file)).read())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_names_a_test_that_exists():
    rows = table_rows()
    assert len(rows) >= 20 and all(len(row) == 3 and row[0] and row[1] for row in rows)
    for _, _, reference in rows:
        match = re.fullmatch(r"`(test_\w+\.py)::(test_\w+)`", reference)
        assert match, reference
        assert match[2] in defined_tests(match[1]), reference


def test_every_command_line_bad_input_test_is_a_row():
    named = {row[2].strip("`").split("::")[1] for row in table_rows() if "test_cli_bad_input.py" in row[2]}
    assert defined_tests("test_cli_bad_input.py") == named
