"""The lab: real VMs under the local libvirtd running ebb-agent (docs/lab.md).

- :mod:`ebb.host.lab.manager`: :class:`~ebb.host.lab.manager.Lab` (up, down, status, shell);
- :mod:`ebb.host.lab.initramfs`: the installed kernel and the initramfs the lab builds;
- :mod:`ebb.host.lab.domain`: a lab guest's domain XML;
- :mod:`ebb.host.lab.guestenv`: the Python a guest runs, seen through 9p;
- :mod:`ebb.host.lab.guestinit`: PID 1 inside a guest (agent, workload, commands);
- :mod:`ebb.host.lab.guestcmd`: running commands in a guest from the host;
- :mod:`ebb.host.lab.memknobs`: the memory-touching workload;
- :mod:`ebb.host.lab.hostile`: a guest process that attacks the agent channel;
- :mod:`ebb.host.lab.hostmem`: shrinking the host with hugepages, and putting it back.

Importing this package imports nothing heavy: guests import its modules too.
"""
