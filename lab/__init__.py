"""The lab: real VMs under the local libvirtd running ebb-agent (docs/lab.md).

- :mod:`ebb.lab.manager`: :class:`~ebb.lab.manager.Lab` (up, down, status, shell);
- :mod:`ebb.lab.initramfs`: the installed kernel and the initramfs the lab builds;
- :mod:`ebb.lab.domain`: a lab guest's domain XML;
- :mod:`ebb.lab.guestenv`: the Python a guest runs, seen through 9p;
- :mod:`ebb.lab.guestinit`: PID 1 inside a guest (agent, workload, commands);
- :mod:`ebb.lab.guestcmd`: running commands in a guest from the host;
- :mod:`ebb.lab.memknobs`: the memory-touching workload;
- :mod:`ebb.lab.hostile`: a guest process that attacks the agent channel;
- :mod:`ebb.lab.hostmem`: shrinking the host with hugepages, and putting it back.

Importing this package imports nothing heavy: guests import its modules too.
"""
