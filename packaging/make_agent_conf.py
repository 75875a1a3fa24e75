"""Make /etc/ebb/ebb-agent.conf, the configuration file that ebb-guest ships.

The file names every key the agent reads from its configuration file
(``ebb.guest.cli.CONFIG_KEYS``), commented out, so that it changes nothing as
shipped: a key with a fixed default shows it (``#yield_step_mib = 32``), a key
whose default the agent computes from the guest's memory says how, with an
example value after "# " (not a bare "#": uncommenting it would change the
agent). The package builds run it on the freshly built ebb.guest (debian/rules,
ebb.spec), so a key added to the agent without a description here fails the
build:

    python3 packaging/make_agent_conf.py [OUTPUT]     (default: standard output)

with ebb importable (PYTHONPATH at the build's site-packages, or the venv).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HEADER = """\
# /etc/ebb/ebb-agent.conf: configuration of ebb-agent, the ebb guest agent.
#
# "key = value" lines; "#" starts a comment. Every key is optional and this
# file as shipped changes nothing: a "#key = value" line shows the default, a
# "# key = value" line an example for a key whose default depends on the
# guest's memory. Uncomment a line to change it, then `systemctl restart
# ebb-agent.service`. Options on the agent's command line win over this file;
# a wrong key or value stops the agent with the file, line and key in its log.
# See ebb-agent(8) and docs/agent.md.
#
# (Made from ebb.guest.cli by packaging/make_agent_conf.py when the package
# was built.)
"""

#: Per key: what it does, and the example shown when the default is computed.
KEYS: Dict[str, Tuple[str, Optional[str]]] = {
    "yield": (
        "Yield: reclaim page cache in this guest when the host asks (or, under host "
        "pressure, by itself), so the memory goes back through free page reporting "
        "without a balloon. false leaves the yield capability out of the hello, and "
        "the host balloons instead (same as --no-yield).",
        None,
    ),
    "yield_anon": (
        "Let yields reclaim anonymous memory too, into swap (guests with swap only); "
        "by default only page cache (same as --yield-anon).",
        None,
    ),
    "yield_max_mib_per_min": (
        "At most this many MiB reclaimed in any minute. Default: the larger of "
        "256 MiB and a quarter of MemTotal.",
        "512",
    ),
    "yield_step_mib": (
        "Largest single reclaim request in MiB, 1..1024.",
        None,
    ),
    "reserve_mib": (
        "Memory in MiB the guest always keeps: never offered, never yielded. "
        "Default: the larger of 64 MiB and 5 % of MemTotal.",
        "256",
    ),
}


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render() -> str:
    """The file's text, from the agent's option parser and config keys."""
    from ebb.guest import cli

    parser = cli.build_parser()
    missing = sorted(set(cli.CONFIG_KEYS) - set(KEYS))
    if missing:
        raise SystemExit(f"make_agent_conf.py: no description for config key(s) {missing}")
    out = [HEADER.rstrip("\n")]
    for key, (dest, _kind) in cli.CONFIG_KEYS.items():
        text, example = KEYS[key]
        out.append("")
        out.extend(f"# {line}" for line in textwrap.wrap(text, width=78))
        default = parser.get_default(dest)
        if default is None:
            if example is None:
                raise SystemExit(f"make_agent_conf.py: {key} has no fixed default: give an example")
            out.append(f"# {key} = {example}")
        else:
            out.append(f"#{key} = {_value(default)}")
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
