"""The command line explains itself: every command of the table has a description, every flag
and positional has help text that states its default (or says it is required), metavars are
UPPER_CASE, choices are listed, and `--version` answers. Checked on the parser itself, so a
flag added later is held to the same rules."""

import argparse
import re

import pytest

from analysis.cli import COMMANDS, build_parser, main

METAVAR = re.compile(r"^[A-Z][A-Z0-9_]*([=|,.:…-]+[A-Z][A-Z0-9_]*)*$")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """'fit' / 'data build' → its parser, walked from the built parser."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


PARSERS = _subparsers(build_parser())


def _problems(name: str, parser: argparse.ArgumentParser) -> list[str]:
    problems = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        flag = "/".join(a.option_strings) or a.dest
        text = a.help or ""
        if not text or text == argparse.SUPPRESS:
            problems.append(f"{name} {flag}: no help text")
            continue
        required = a.required or (not a.option_strings and a.nargs is None)
        if not required and "default" not in text:
            problems.append(f"{name} {flag}: help does not state the default: {text!r}")
        if a.nargs != 0:  # takes a value: one explicit UPPER_CASE metavar style, its choices named
            if not isinstance(a.metavar, str) or not METAVAR.match(a.metavar):
                problems.append(f"{name} {flag}: metavar {a.metavar!r} is not an explicit UPPER_CASE name "
                                f"(e.g. N, DIR, NAME|PATH)")
            if a.choices and not all(str(c) in text for c in a.choices):
                problems.append(f"{name} {flag}: help does not list the choices {list(a.choices)}")
    return problems


def test_every_command_in_the_table_is_built():
    assert {c.name for c in COMMANDS} <= set(PARSERS)


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_command_explains_itself(command):
    row = next(c for c in COMMANDS if c.name == command)
    parser = PARSERS[command]
    assert row.help and row.description, f"{command}: no description of its own (only the one-line help)"
    assert "." not in parser.description.split()[0] or " " in parser.description, \
        f"{command}: the description is a module path: {parser.description!r}"
    assert _problems(command, parser) == []


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("golf ")
