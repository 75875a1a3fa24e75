"""ebbd limited to the benchmark's guests: ``scoped_ebbd.py --prefix P -- EBBD-ARGS``.

ebbd manages every VM on the host that has a balloon (as MOM does). On a shared
machine other people's lab VMs run next to the benchmark's, and the benchmark
must neither balloon them nor count them. This runs the real ebbd
(:func:`ebb.host.cli_ebbd.main`) with one change: the hypervisor's list of running
domains keeps only names starting with ``--prefix``. Everything else (policy,
governor, controllers, trace) is ebbd's own code.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional

from ebb.host import cli_ebbd
from ebb.host.hypervisor import connection


def scope_to_prefix(prefix: str) -> None:
    """Make every Hypervisor see only domains whose names start with ``prefix``."""
    original = connection.Hypervisor.running_domains

    def running_domains(self: connection.Hypervisor) -> Dict[str, str]:
        return {name: uuid for name, uuid in original(self).items() if name.startswith(prefix)}

    connection.Hypervisor.running_domains = running_domains  # type: ignore[method-assign]


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
