"""The libvirt domain XML of a lab guest.

Everything a managed VM needs (see docs/vm-xml.md): a virtio balloon with
statistics every 2 s and free page reporting (unless turned off), a
virtio-serial controller and the ``org.ebb.agent.0`` channel on a unix socket,
and ebb's metadata. On top of that the lab's own
boot path (kernel, initramfs, command line), the host's root and the guest's
share over 9p, a serial console written to a file, and the lab marker
(:data:`LAB_NS`) by which ``ebbctl lab down`` recognises the domains it may
remove.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional
from xml.sax.saxutils import escape, quoteattr

LAB_NS = "urn:ebb:lab:1"
EBB_NS = "urn:ebb:policy:1"
AGENT_PORT = "org.ebb.agent.0"
#: Translated-code cache of a software-emulated guest (MiB); see GuestSpec.
DEFAULT_TB_CACHE_MIB = 128


@dataclass
class GuestSpec:
    """One lab guest: everything its domain XML is made from."""

    name: str
    memory_mib: int
    kernel: Path
    initramfs: Path
    python: Path
    bin_dir: Path
    guest_dir: Path
    state_dir: Path
    domain_type: str = "qemu"
    vcpus: int = 1
    run: Optional[str] = None
    agent: bool = True
    agent_args: str = ""
    ebb_metadata: Dict[str, str] = field(default_factory=dict)
    #: Run this guest's QEMU as root (the project is unreadable to QEMU's user).
    qemu_as_root: bool = False
    #: Size of QEMU's translated-code cache under software emulation (MiB; 0:
    #: QEMU's default). QEMU 7 reserves 1 GiB per guest and fills it as new
    #: guest code runs; that host memory is not the guest's, no balloon can take
    #: it back, and a KVM guest has nothing like it. Capped, a lab guest costs
    #: the host about what a KVM guest would.
    tb_cache_mib: int = DEFAULT_TB_CACHE_MIB
    #: ``<memballoon freePageReporting='on'>``: memory the guest frees goes back
    #: to the host by itself. Off gives the baseline of a balloon-only host.
    free_page_reporting: bool = True

    @property
    def channel_socket(self) -> Path:
        return self.guest_dir / "agent.sock"

    @property
    def share_dir(self) -> Path:
        return self.guest_dir / "share"

    @property
    def console_log(self) -> Path:
        return self.guest_dir / "console.log"

    def cmdline(self) -> str:
        """Kernel command line: console, PSI, and the ``ebb.*`` keys the guest reads."""
        words = [
            "console=ttyS0", "psi=1", "panic=-1", "loglevel=6",
            f"ebb.name={self.name}", f"ebb.python={self.python}", f"ebb.bin={self.bin_dir}",
            f"ebb.agent={1 if self.agent else 0}",
        ]
        if PROJECT_DIR.is_relative_to("/tmp") and " " not in str(PROJECT_DIR):
            # The guest mounts a tmpfs over /tmp; its init binds the project back.
            words.append(f"ebb.keep={PROJECT_DIR}")
        if self.agent_args:
            words.append(_quoted("ebb.agent_args", self.agent_args))
        if self.run:
            words.append(_quoted("ebb.run", self.run))
        return " ".join(words)


#: The checkout (or installation) the guest runs ebb from, through the host root.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def _quoted(key: str, value: str) -> str:
    """``key="value"`` for the kernel command line (which knows double quotes only)."""
    if '"' in value or "\n" in value:
        raise ValueError(f"{key} cannot contain double quotes or newlines: {value!r}")
    shlex.split(value)  # refuse what the guest could not split back
    return f'{key}="{value}"'


def ebb_metadata_xml(settings: Dict[str, str]) -> str:
    """The ``<ebb:vm>`` element (docs/vm-xml.md): managed, plus any attributes given.

    ``settings`` are the element's attributes, e.g. ``{"floor_mib": "128"}``.
    """
    attrs = {"enabled": "yes", **settings}
    text = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
    return f'<ebb:vm xmlns:ebb="{EBB_NS}" {text}/>'


def _seclabel(spec: GuestSpec) -> str:
    if not spec.qemu_as_root:
        return ""
    return ("\n  <seclabel type='static' model='dac' relabel='no'>"
            "<label>+0:+0</label></seclabel>")


def _features(spec: GuestSpec) -> str:
    tcg = ""
    if spec.domain_type == "qemu" and spec.tb_cache_mib > 0:
        tcg = f"<tcg><tb-cache unit='MiB'>{int(spec.tb_cache_mib)}</tb-cache></tcg>"
    return f"<features><acpi/>{tcg}</features>"


def _memballoon(spec: GuestSpec) -> str:
    reporting = " freePageReporting='on'" if spec.free_page_reporting else ""
    return f"<memballoon model='virtio'{reporting}>"


def domain_xml(spec: GuestSpec) -> str:
    """The full domain XML for ``spec``."""
    kib = spec.memory_mib * 1024
    lab_marker = (
        f'<lab:guest xmlns:lab="{LAB_NS}" state-dir={quoteattr(str(spec.state_dir))} '
        f'guest-dir={quoteattr(str(spec.guest_dir))}/>'
    )
    return f"""<domain type={quoteattr(spec.domain_type)}>
  <name>{escape(spec.name)}</name>
  <title>ebb lab guest</title>
  <description>Created by ebbctl lab up; removed by ebbctl lab down.</description>
  <metadata>
    {lab_marker}
    {ebb_metadata_xml(spec.ebb_metadata)}
  </metadata>
  <memory unit='KiB'>{kib}</memory>
  <currentMemory unit='KiB'>{kib}</currentMemory>
  <vcpu placement='static'>{spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(str(spec.kernel))}</kernel>
    <initrd>{escape(str(spec.initramfs))}</initrd>
    <cmdline>{escape(spec.cmdline())}</cmdline>
  </os>
  {_features(spec)}
  <on_poweroff>destroy</on_poweroff>{_seclabel(spec)}
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount' accessmode='passthrough' multidevs='remap'>
      <driver type='path'/>
      <source dir='/'/>
      <target dir='hostroot'/>
      <readonly/>
    </filesystem>
    <filesystem type='mount' accessmode='squash'>
      <driver type='path'/>
      <source dir={quoteattr(str(spec.share_dir))}/>
      <target dir='labshare'/>
    </filesystem>
    <controller type='virtio-serial' index='0'/>
    <channel type='unix'>
      <source mode='bind' path={quoteattr(str(spec.channel_socket))}/>
      <target type='virtio' name='{AGENT_PORT}'/>
    </channel>
    <serial type='file'>
      <source path={quoteattr(str(spec.console_log))}/>
      <target port='0'/>
    </serial>
    {_memballoon(spec)}
      <stats period='2'/>
    </memballoon>
    <video><model type='none'/></video>
  </devices>
</domain>
"""
