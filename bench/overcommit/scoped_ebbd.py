"""ebbd limited to the benchmark's guests: ``scoped_ebbd.py --prefix P -- EBBD-ARGS``.

ebbd manages every VM on the host that has a balloon (as MOM does) and connects
to every VM's ``org.ebb.agent.0`` channel. On a shared machine other people's
lab VMs and tests (with their own ebbd) run next to the benchmark, which must
neither balloon their VMs nor be ballooned by their ebbd. So the benchmark's
guests carry ``<ebb:vm enabled="no">`` and name their agent channel
``org.ebb.bench.0`` (other ebbds leave them alone), and this runs the real ebbd
(:func:`ebb.host.cli_ebbd.main`) with three changes, all about which VMs it sees:

- the hypervisor's list of running domains keeps only names starting with ``--prefix``;
- those domains are read as enabled;
- their agent channel is the one named ``org.ebb.bench.0``.

Everything else (policy, governor, controllers, trace) is ebbd's own code.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Dict, List, Optional

from ebb.host import cli_ebbd
from ebb.host.hypervisor import connection, domain_xml

BENCH_PORT = "org.ebb.bench.0"


def scope_to_prefix(prefix: str) -> None:
    """Make every Hypervisor see only domains whose names start with ``prefix``."""
    original = connection.Hypervisor.running_domains

    def running_domains(self: connection.Hypervisor) -> Dict[str, str]:
        return {name: uuid for name, uuid in original(self).items() if name.startswith(prefix)}

    connection.Hypervisor.running_domains = running_domains  # type: ignore[method-assign]
    domain_xml.AGENT_CHANNEL_NAME = BENCH_PORT  # type: ignore[misc]
    original_parse = connection.parse_domain_xml

    def parse(xml: str) -> domain_xml.DomainSettings:
        settings = original_parse(xml)
        if settings.name.startswith(prefix):
            settings = dataclasses.replace(settings, enabled=True)
        return settings

    connection.parse_domain_xml = parse  # type: ignore[assignment]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True, help="manage only VMs named PREFIX*")
    parser.add_argument("ebbd_args", nargs=argparse.REMAINDER, help="ebbd's own arguments")
    args = parser.parse_args(argv)
    scope_to_prefix(args.prefix)
    rest = [a for a in args.ebbd_args if a != "--"]
    return cli_ebbd.main(rest)


if __name__ == "__main__":
    sys.exit(main())
