"""Make /etc/ebb/ebbd.toml, the configuration file that ebb-host ships.

The file shows every key of ebbd's configuration, commented out with its
default and the comment the key has in ebb.host.config, so that it changes
nothing as shipped and always matches the daemon it comes with. The package
builds run it on the freshly built ebb.host (debian/rules, ebb.spec):

    python3 packaging/make_ebbd_toml.py [OUTPUT]     (default: standard output)

with ebb importable (PYTHONPATH at the build's site-packages, or the venv).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

HEADER = """\
# /etc/ebb/ebbd.toml: configuration of ebbd, the ebb host daemon.
#
# Every key is optional: the values shown (commented out) are the defaults, so
# this file as shipped changes nothing. Uncomment a line to change it, then
# `systemctl reload ebbd` (or `ebbctl reload`); the few keys that need a restart
# say so in docs/configuration.md and ebbd.toml(5). ebbd refuses to start with a
# clear message when a key or value is wrong, and a reload with one keeps the
# running configuration.
#
# (Made from ebb.host.config by packaging/make_ebbd_toml.py when the package
# was built.)
"""

#: Values shown for the installed system where the default depends on where
#: ebb runs from, and notes that only matter for the packaged daemon.
INSTALLED_VALUES: Dict[str, Any] = {"daemon.policy_dir": "/etc/ebb/policy.d"}
NOTES = {
    "daemon.control_socket": "Root and members of group \"ebb\" may use it (ebbctl).",
    "trace.path": "e.g. \"/var/log/ebb/trace.jsonl\": the unit lets ebbd write under /var/log/ebb.",
}


def _field_comments(section_type: type) -> Dict[str, List[str]]:
    """The ``#:`` comment lines written above each field in the class source."""
    comments: Dict[str, List[str]] = {}
    pending: List[str] = []
    for line in inspect.getsource(section_type).splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"(\w+)\s*:", stripped)
        if match and pending:
            comments[match.group(1)] = pending
        pending = []
    return comments


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def _wrapped(text: str) -> List[str]:
    text = text.replace("``", "")
    return [f"# {line}" for line in textwrap.wrap(text, width=78)]


def render() -> str:
    """The file's text, from the configuration's dataclasses."""
    from ebb.host import config

    defaults = config.EbbdConfig()
    out = [HEADER.rstrip("\n")]
    for name, section_type in config.SECTIONS.items():
        doc = (section_type.__doc__ or "").strip().splitlines()[0]
        doc = re.sub(r"^``\[\w+\]``:\s*", "", doc)
        out.append("")
        out.extend(_wrapped(doc[:1].upper() + doc[1:]))
        out.append(f"[{name}]")
        comments = _field_comments(section_type)
        section = getattr(defaults, name)
        for f in dataclasses.fields(section_type):
            dotted = f"{name}.{f.name}"
            text = " ".join(comments.get(f.name, []))
            if dotted in NOTES:
                text = f"{text} {NOTES[dotted]}".strip()
            if text:
                out.extend(_wrapped(text))
            value = INSTALLED_VALUES.get(dotted, getattr(section, f.name))
            out.append(f"#{f.name} = {_toml_value(value)}")
    return "\n".join(out) + "\n"


def main(argv: List[str]) -> int:
    text = render()
    if argv:
        Path(argv[0]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
