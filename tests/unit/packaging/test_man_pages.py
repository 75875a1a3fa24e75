"""The man pages in packaging/man/ stay true to the commands they describe.

Each page is hand-written roff. These tests read the pages' tagged paragraphs
(the line after each ``.TP``) and compare them with the argparse parsers the
commands really build, in both directions: an option added to a command without
a line in its page fails, and so does a page describing an option the command no
longer has. ``ebbctl`` needs a ``.SS`` subsection per subcommand; ``ebbd.toml(5)``
must list every configuration key with its default. The packaging must install
every page into the right package, for both Debian and RPM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import pytest
from ebb.guest.cli import build_parser as build_agent_parser
from ebb.host import config
from ebb.host.cli_ebbctl import build_parser as build_ebbctl_parser
from ebb.host.cli_ebbd import build_parser as build_ebbd_parser

REPO = Path(__file__).resolve().parents[3]
MAN = REPO / "packaging" / "man"
DEBIAN = REPO / "packaging" / "deb" / "debian"
SPEC = REPO / "packaging" / "rpm" / "ebb.spec"

#: Which package ships which page.
PAGES_BY_PACKAGE = {
    "ebb-host": {"ebbd.8", "ebbctl.8", "ebbd.toml.5"},
    "ebb-guest": {"ebb-agent.8"},
}

#: Defaults that depend on where ebb runs from: the page shows the installed one.
INSTALLED_DEFAULTS = {"daemon.policy_dir": '"/etc/ebb/policy.d"'}

_ESCAPES = [
    (r"\-", "-"), (r"\(dq", '"'), (r"\(em", "--"), (r"\&", ""), (r"\ ", " "), (r"\e", "\\"),
]
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


# --- reading a page ------------------------------------------------------------


def _plain(text: str) -> str:
    """Roff text without font changes and with the escapes the pages use resolved."""
    text = re.sub(r"\\f[BIRP]", "", text)
    for escape, char in _ESCAPES:
        text = text.replace(escape, char)
    return text


def _line_text(line: str) -> str:
    """What a source line prints: a macro's arguments joined, or the text itself."""
    if not line.startswith("."):
        return _plain(line)
    name, _, rest = line[1:].partition(" ")
    args = [a[1:-1] if a.startswith('"') else a for a in re.findall(r'"[^"]*"|\S+', rest)]
    # .BR, .BI, .IR ... alternate fonts between arguments with no space between.
    joiner = "" if len(name) == 2 and set(name) <= set("BIR") else " "
    return _plain(joiner.join(args))


@dataclasses.dataclass
class Part:
    """The tags (``.TP`` lines) under one ``.SH`` section and ``.SS`` subsection."""

    section: str
    subsection: Optional[str]
    tags: List[str]


def read_page(name: str) -> List[Part]:
    """A page as its parts, in order."""
    parts: List[Part] = []
    lines = (MAN / name).read_text(encoding="utf-8").splitlines()
    section, subsection = "", None
    for i, line in enumerate(lines):
        if line.startswith(".SH "):
            section, subsection = _line_text(line), None
            parts.append(Part(section, subsection, []))
        elif line.startswith(".SS "):
            subsection = _line_text(line)
            parts.append(Part(section, subsection, []))
        elif line == ".TP" and i + 1 < len(lines) and parts:
            parts[-1].tags.append(_line_text(lines[i + 1]))
    return parts


def _tag_options(parts: List[Part]) -> Set[str]:
    return {opt for part in parts for tag in part.tags for opt in _OPTION.findall(tag)}


# --- reading a parser ----------------------------------------------------------


def _options(parser: argparse.ArgumentParser) -> Set[str]:
    return {s for action in parser._actions for s in action.option_strings}


Command = Tuple[Tuple[str, ...], argparse.ArgumentParser]


def _commands(parser: argparse.ArgumentParser, path: Tuple[str, ...] = ()) -> Iterator[Command]:
    """Every subcommand, nested ones too, as (path, parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


# --- the tests -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("page", "build"),
    [("ebbd.8", build_ebbd_parser), ("ebb-agent.8", build_agent_parser)],
    ids=["ebbd", "ebb-agent"],
)
def test_page_describes_exactly_the_commands_options(page: str, build: Any) -> None:
    described = _tag_options([p for p in read_page(page) if p.section == "OPTIONS"])
    real = _options(build())
    assert real - described == set(), f"{page}: options with no entry under OPTIONS"
    assert described - real == set(), f"{page}: OPTIONS describes options the command lacks"


def test_ebbctl_page_has_its_global_options() -> None:
    described = _tag_options([p for p in read_page("ebbctl.8") if p.section == "OPTIONS"])
    assert described == _options(build_ebbctl_parser())


def _ebbctl_subsections() -> Dict[Tuple[str, ...], Part]:
    """COMMANDS subsections by the command path their heading starts with."""
    paths = {path for path, _ in _commands(build_ebbctl_parser())}
    found: Dict[Tuple[str, ...], Part] = {}
    for part in read_page("ebbctl.8"):
        if part.section != "COMMANDS" or part.subsection is None:
            continue
        words = tuple(part.subsection.split())
        key = next((words[:k] for k in range(len(words), 0, -1) if words[:k] in paths), None)
        assert key is not None, f"ebbctl.8: subsection {part.subsection!r} names no command"
        assert key not in found, f"ebbctl.8: two subsections for {' '.join(key)}"
        found[key] = part
    return found


def test_every_ebbctl_command_has_a_subsection_describing_its_options() -> None:
    sections = _ebbctl_subsections()
    for path, parser in _commands(build_ebbctl_parser()):
        name = " ".join(path)
        if not _has_subcommands(parser):
            assert path in sections, f"ebbctl.8: no subsection for 'ebbctl {name}'"
        # A group's subsection ("lab") may describe options its commands share.
        ancestry = [sections[path[:k]] for k in range(1, len(path) + 1) if path[:k] in sections]
        missing = _options(parser) - {"-h", "--help"} - _tag_options(ancestry)
        assert missing == set(), f"ebbctl.8: 'ebbctl {name}' options not described"


def test_ebbctl_subsections_describe_only_real_options() -> None:
    commands = dict(_commands(build_ebbctl_parser()))
    for path, part in _ebbctl_subsections().items():
        real = set().union(*(_options(p) for q, p in commands.items() if q[:len(path)] == path))
        extra = _tag_options([part]) - real
        assert extra == set(), f"ebbctl.8: '{' '.join(path)}' describes options it lacks"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def test_ebbd_toml_page_lists_every_key_with_its_default() -> None:
    shown: Dict[str, str] = {}
    for part in read_page("ebbd.toml.5"):
        if part.section == "SECTIONS" and part.subsection:
            section = part.subsection.strip("[]")
            for tag in part.tags:
                key, _, value = tag.partition(" = ")
                shown[f"{section}.{key}"] = value
    expected: Dict[str, str] = {}
    for section, section_type in config.SECTIONS.items():
        for f in dataclasses.fields(section_type):
            dotted = f"{section}.{f.name}"
            if dotted in INSTALLED_DEFAULTS:
                expected[dotted] = INSTALLED_DEFAULTS[dotted]
            else:
                expected[dotted] = _toml(_default(f))
    assert shown == expected


def _debian_pages() -> Dict[str, Set[str]]:
    pages: Dict[str, Set[str]] = {}
    for listing in DEBIAN.glob("*.manpages"):
        entries = [line.strip() for line in listing.read_text().splitlines()]
        pages[listing.stem] = {Path(e).name for e in entries if e and not e.startswith("#")}
        for entry in entries:
            if entry and not entry.startswith("#"):
                assert (REPO / entry).is_file(), f"{listing.name}: {entry} does not exist"
    return pages


def test_debian_packages_install_every_page() -> None:
    assert _debian_pages() == PAGES_BY_PACKAGE
    assert {p.name for p in MAN.iterdir()} == set().union(*PAGES_BY_PACKAGE.values())


def test_rpm_packages_install_every_page() -> None:
    spec = SPEC.read_text(encoding="utf-8")
    installed = dict(re.findall(
        r"packaging/man/(\S+) %\{buildroot\}%\{_mandir\}/man\d/(\S+)", spec))
    assert installed == {name: name for name in set().union(*PAGES_BY_PACKAGE.values())}
    files: Dict[str, Set[str]] = {}
    next_part = r"(?=^%(?:files|changelog|package|description|pre|post|preun|postun)\b|\Z)"
    for package, body in re.findall(rf"^%files -n (\S+)\n(.*?){next_part}", spec, re.M | re.S):
        files[package] = set(re.findall(r"^%\{_mandir\}/man\d/(\S+?)\*$", body, re.M))
    for package, pages in PAGES_BY_PACKAGE.items():
        assert files.get(package) == pages, package
    for name in installed:
        section = name.rsplit(".", 1)[1]
        assert f"%{{_mandir}}/man{section}/{name}" in spec
