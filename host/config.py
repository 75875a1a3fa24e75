"""``/etc/ebb/ebbd.toml``: the daemon's configuration, validated once.

The file is TOML (read with the standard library's ``tomllib``). Every key has a
default, so a missing file means "all defaults". Each ``[section]`` maps to one
frozen dataclass below; the daemon builds every component from the resulting
:class:`EbbdConfig` and never re-reads the file behind its back (SIGHUP builds a
new one). Unknown sections or keys and values of the wrong type or out of range
are rejected with a :class:`ConfigError` that names the file and the key, e.g.::

    /etc/ebb/ebbd.toml: daemon.policy_interval_s: must be > 0, got -1

docs/configuration.md lists every key; a unit test keeps the two in agreement.
"""


import dataclasses
import logging
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from ebb.protocol import MAX_FRAME_BYTES, REPORT_INTERVAL_MS_MAX, REPORT_INTERVAL_MS_MIN

LOG = logging.getLogger(__name__)

#: Where ebbd looks for its configuration when ``--config`` is not given.
DEFAULT_CONFIG_PATH = Path("/etc/ebb/ebbd.toml")
#: The installed policy directory; used as the default when it exists.
INSTALLED_POLICY_DIR = Path("/etc/ebb/policy.d")
#: The packaged policy set used when nothing is installed under /etc.
DEFAULT_POLICY_SET = "cooperative"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the file and key."""


def packaged_policy_dir(name: str = DEFAULT_POLICY_SET) -> Path:
    """The directory of a policy set shipped inside ``ebb.host.policies``."""
    from ebb.host.policies import policy_dir

    return Path(policy_dir(name))


def default_policy_dir() -> Path:
    """``/etc/ebb/policy.d`` when installed there, else the packaged default set."""
    if INSTALLED_POLICY_DIR.is_dir():
        return INSTALLED_POLICY_DIR
    return packaged_policy_dir()


# --- value checks: each returns None when fine, else the reason -----------------


Check = Callable[[Any], "str | None"]


def _bound_text(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def _between(low: float, high: float, *, above: bool = False) -> Check:
    """``low <= value <= high`` (``low < value`` with ``above``).

    Every number has an upper bound: what the code that uses it can take (a
    wait longer than the platform's timeout raises, libvirt takes a C int, the
    protocol caps the report interval), or what still makes sense (a week).
    """

    def check(value: Any) -> str | None:
        if above and not value > low:
            return f"must be > {_bound_text(low)}, got {value!r}"
        if not above and not value >= low:
            return f"must be >= {_bound_text(low)}, got {value!r}"
        if not value <= high:
            return f"must be <= {_bound_text(high)}, got {value!r}"
        return None

    check.bounds = (low, high, above)  # type: ignore[attr-defined]
    return check


#: Upper bounds shared by many keys.
HOUR_S = 3600.0
DAY_S = 86400.0
WEEK_S = 7 * DAY_S
#: Rates (faults/s, pages/s) beyond any machine.
MAX_RATE = 1e9
#: 2^53 KiB is the protocol's largest memory size; 2^43 MiB is the same.
MAX_MIB = 2**43


def _share(value: Any) -> str | None:
    return None if 0 < value <= 1 else f"must be a share in (0, 1], got {value!r}"


_share.bounds = (0, 1, True)  # type: ignore[attr-defined]


def range_text(low: float, high: float, above: bool) -> str:
    """A key's accepted range as docs/configuration.md "Accepted ranges" prints it."""
    return f"{'above' if above else 'from'} {_bound_text(low)} to {_bound_text(high)}"


def numeric_ranges() -> dict[str, str]:
    """``section.key`` -> accepted range, for every numeric key."""
    ranges: dict[str, str] = {}
    for name, section_type in SECTIONS.items():
        for f in dataclasses.fields(section_type):
            bounds = getattr(f.metadata.get("check"), "bounds", None)
            if bounds is not None:
                ranges[f"{name}.{f.name}"] = range_text(*bounds)
    return ranges


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        if value.lower() in choices:
            return None
        return f"must be one of {', '.join(choices)}, got {value!r}"

    return check


def _absolute_path(value: Any) -> str | None:
    return None if Path(value).is_absolute() else f"must be an absolute path, got {value!r}"


def _optional_absolute_path(value: Any) -> str | None:
    return None if value == "" else _absolute_path(value)


def _listen_address(value: Any) -> str | None:
    if value == "":
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be HOST:PORT (e.g. \"127.0.0.1:9677\") or \"\" for off, got {value!r}"
    return None


def _domain_patterns(value: Any) -> str | None:
    if not value:
        return "must name at least one pattern (\"*\" is every VM)"
    if not all(value):
        return f"patterns must not be empty, got {list(value)!r}"
    return None


#: A virtio-serial port name ebbd accepts: what the guest sees in /dev/virtio-ports/.
_PORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _port_name(value: Any) -> str | None:
    if _PORT_NAME.fullmatch(value):
        return None
    return ("must be a virtio-serial port name (1 to 128 letters, digits, '.', '-' or '_', "
            f"starting with a letter or digit, e.g. \"org.ebb.agent.0\"), got {value!r}")


def _rule(check: Check) -> dict[str, Check]:
    """Field metadata carrying a key's range/choice check."""
    return {"check": check}


# --- sections -------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    """``[daemon]``: where ebbd connects, how often it decides, where it keeps state."""

    libvirt_uri: str = "qemu:///system"
    policy_interval_s: float = field(default=2.0, metadata=_rule(_between(0.1, HOUR_S)))
    policy_dir: Path = field(default_factory=default_policy_dir, metadata=_rule(_absolute_path))
    run_dir: Path = field(default=Path("/run/ebb"), metadata=_rule(_absolute_path))
    control_socket: Path = field(default=Path("/run/ebb/ebbd.sock"), metadata=_rule(_absolute_path))
    dry_run: bool = False
    log_level: str = field(default="info", metadata=_rule(_one_of(LOG_LEVELS)))


@dataclass(frozen=True)
class HostConfig:
    """``[host]``: where the host's kernel state is read, and when pressure is urgent."""

    proc_root: Path = field(default=Path("/proc"), metadata=_rule(_absolute_path))
    sys_root: Path = field(default=Path("/sys"), metadata=_rule(_absolute_path))
    #: Share of host memory (MemTotal less hugepages): when freeable memory
    #: (MemFree+Buffers+Cached) crosses it, the engine ticks at once instead of
    #: waiting for the next interval.
    pressure_tick_threshold: float = field(default=0.20, metadata=_rule(_share))


@dataclass(frozen=True)
class PressureConfig:
    """``[pressure]``: where each host pressure level starts (docs/policy.md, "Host fields").

    The level (0 none, 1 low, 2 high, 3 critical) is the highest that any one
    measure reaches: MemAvailable below a share of host memory, swapping at a
    rate, memory PSI. Policies read it as ``Host.pressure_level``; agents are
    told it (and yield in the background only while it is 1 or more).
    """

    #: MemAvailable below these shares of host memory (MemTotal less hugepages).
    available_low_share: float = field(default=0.20, metadata=_rule(_share))
    available_high_share: float = field(default=0.10, metadata=_rule(_share))
    available_critical_share: float = field(default=0.05, metadata=_rule(_share))
    #: Host swap-in plus swap-out at or above these rates, KiB per second.
    swap_low_kib_s: float = field(default=64.0, metadata=_rule(_between(0, MAX_RATE, above=True)))
    swap_high_kib_s: float = field(
        default=1024.0, metadata=_rule(_between(0, MAX_RATE, above=True))
    )
    swap_critical_kib_s: float = field(
        default=16384.0, metadata=_rule(_between(0, MAX_RATE, above=True))
    )
    #: Host memory PSI avg10, percent of time: "some" for low and high, "full" for critical.
    psi_some_low: float = field(default=1.0, metadata=_rule(_between(0, 100, above=True)))
    psi_some_high: float = field(default=10.0, metadata=_rule(_between(0, 100, above=True)))
    psi_full_critical: float = field(default=10.0, metadata=_rule(_between(0, 100, above=True)))


@dataclass(frozen=True)
class HypervisorConfig:
    """``[hypervisor]``: libvirt housekeeping (stats period, re-listing, reconnecting)."""

    #: Period asked of the virtio-balloon driver for fresh guest statistics.
    stats_period_s: int = field(default=2, metadata=_rule(_between(1, HOUR_S)))
    #: Full domain listing as a safety net behind lifecycle events.
    relist_interval_s: float = field(default=30.0, metadata=_rule(_between(1, DAY_S)))
    reconnect_initial_s: float = field(default=1.0, metadata=_rule(_between(0.1, HOUR_S)))
    reconnect_max_s: float = field(default=30.0, metadata=_rule(_between(0.1, HOUR_S)))
    #: Where libvirt's QEMU driver writes ``NAME.pid`` (qemu:///system).
    qemu_run_dir: Path = field(default=Path("/run/libvirt/qemu"), metadata=_rule(_absolute_path))
    #: Shell-style patterns (fnmatch) of the domain names ebbd manages; others
    #: are ignored entirely (no balloon, no agent channel, not in status).
    domains: tuple[str, ...] = field(default=("*",), metadata=_rule(_domain_patterns))
    #: Manage every VM ``domains`` matches even when its XML opts out
    #: (``<ebb:vm enabled="no">``): for an ebbd dedicated to VMs that every other
    #: ebbd on the host must leave alone.
    manage_opted_out: bool = False


@dataclass(frozen=True)
class GuestsConfig:
    """``[guests]``: the agent channels (reports, staleness, misbehaving guests)."""

    #: The policy reads one report per tick (``daemon.policy_interval_s``, 2 s): a
    #: report costs the guest CPU time, which reports between ticks waste.
    report_interval_ms: int = field(
        default=2000, metadata=_rule(_between(REPORT_INTERVAL_MS_MIN, REPORT_INTERVAL_MS_MAX))
    )
    stale_after_s: float = field(default=5.0, metadata=_rule(_between(0, DAY_S, above=True)))
    heartbeat_interval_s: float = field(default=5.0, metadata=_rule(_between(0.1, HOUR_S)))
    #: More frames than this per second from one guest cuts it off.
    flood_max_frames_per_s: int = field(default=50, metadata=_rule(_between(1, 1_000_000)))
    #: More bytes than this per second from one guest cuts it off. At least one
    #: frame of the largest size, so that no legal message alone is a flood.
    flood_max_bytes_per_s: int = field(
        default=256 * 1024, metadata=_rule(_between(MAX_FRAME_BYTES, 2**31))
    )
    #: First wait before reconnecting to a guest that was cut off; doubles each time.
    cut_off_backoff_s: float = field(default=10.0, metadata=_rule(_between(0.1, DAY_S)))
    cut_off_backoff_max_s: float = field(default=300.0, metadata=_rule(_between(0.1, DAY_S)))
    #: Wait between attempts to open a channel socket that is not there yet.
    connect_retry_s: float = field(default=2.0, metadata=_rule(_between(0.1, HOUR_S)))
    #: The virtio-serial port (``<target type='virtio' name=...>``) of a VM's
    #: agent; a VM without a port of this name is managed without an agent.
    agent_channel: str = field(default="org.ebb.agent.0", metadata=_rule(_port_name))


@dataclass(frozen=True)
class GovernorSection:
    """``[governor]``: the safety limits no policy can bypass."""

    #: Floor for a VM whose XML sets none (``<ebb:vm floor_mib=...>`` or min_guarantee).
    default_floor_mib: int = field(default=512, metadata=_rule(_between(0, MAX_MIB)))
    #: Largest balloon inflation (memory taken) per tick, as a share of the VM's maximum memory.
    max_change_share: float = field(default=0.10, metadata=_rule(_share))
    #: What a guest's agent offers may be taken in one tick, beyond ``max_change_share``.
    take_offers_at_once: bool = True
    #: Largest balloon deflation (memory given back) per tick, as a share of the
    #: VM's maximum memory; never less than ``max_change_share``.
    max_deflate_share: float = field(default=0.25, metadata=_rule(_share))
    #: A guest at or above any of these is stalling: nothing is taken from it.
    stall_psi_some_avg10: float = field(default=10.0, metadata=_rule(_between(0, 100, above=True)))
    stall_major_faults_per_s: float = field(
        default=1000.0, metadata=_rule(_between(0, MAX_RATE, above=True))
    )
    #: Pages swapped in per second (pages of ebb.host.units.PAGE_KIB; 256 = 1 MiB/s at 4 KiB).
    stall_swap_in_per_s: float = field(
        default=256.0, metadata=_rule(_between(0, MAX_RATE, above=True))
    )
    #: After an inflation, how long to watch the guest for harm before trusting it.
    rollback_window_s: float = field(default=30.0, metadata=_rule(_between(0, DAY_S, above=True)))
    #: Rise in the guest's major faults per second (over its rate before the inflation)
    #: that counts as harm within the window.
    rollback_major_faults_per_s: float = field(
        default=200.0, metadata=_rule(_between(0, MAX_RATE, above=True))
    )
    #: Rise in the guest's swap-in, pages per second, that counts as harm (128 = 512 KiB/s).
    rollback_swap_in_per_s: float = field(
        default=128.0, metadata=_rule(_between(0, MAX_RATE, above=True))
    )
    #: Rise in the guest's PSI some avg10 (percentage points) that counts as harm.
    rollback_psi_some_avg10: float = field(
        default=10.0, metadata=_rule(_between(0, 100, above=True))
    )
    #: First back-off after a rollback; grows by ``backoff_growth`` on each further one.
    backoff_initial_s: float = field(default=60.0, metadata=_rule(_between(0, WEEK_S, above=True)))
    #: Each further rollback multiplies the back-off by this.
    backoff_growth: float = field(default=2.0, metadata=_rule(_between(1, 100)))
    backoff_max_s: float = field(default=1800.0, metadata=_rule(_between(0, WEEK_S, above=True)))
    #: No rollback for this long: the next back-off is ``backoff_initial_s`` again.
    backoff_reset_s: float = field(default=1800.0, metadata=_rule(_between(0, WEEK_S, above=True)))
    #: No progress toward the target for this long: the guest is stuck (squeezed: 5 s).
    stuck_after_s: float = field(default=5.0, metadata=_rule(_between(0, DAY_S, above=True)))
    #: No progress for this long: uncooperative, excluded from inflation (squeezed: 20 s).
    uncooperative_after_s: float = field(
        default=20.0, metadata=_rule(_between(0, DAY_S, above=True))
    )
    #: Share of host memory the host keeps: no guest is given memory from it (floors
    #: and rollbacks excepted), whatever the policy says.
    host_reserve_share: float = field(default=0.10, metadata=_rule(_between(0, 0.9)))
    #: An uncooperative guest is asked for memory again after this long.
    uncooperative_retry_s: float = field(
        default=300.0, metadata=_rule(_between(0, WEEK_S, above=True))
    )


@dataclass(frozen=True)
class BalloonConfig:
    """``[balloon]``: the balloon controller."""

    #: Targets closer than this to the current balloon are not applied (noise).
    min_change_kib: int = field(default=1024, metadata=_rule(_between(0, 2**30)))


@dataclass(frozen=True)
class KsmConfig:
    """``[ksm]``: whether ebbd drives KSM at all."""

    enabled: bool = True


@dataclass(frozen=True)
class MemtuneConfig:
    """``[memtune]``: a cgroup soft limit for guests that ignore the balloon."""

    soft_limit_uncooperative: bool = False


@dataclass(frozen=True)
class TraceConfig:
    """``[trace]``: the per-tick JSON-lines trace (off when ``path`` is empty)."""

    path: str = field(default="", metadata=_rule(_optional_absolute_path))
    max_bytes: int = field(default=64 * 1024 * 1024, metadata=_rule(_between(4096, 2**40)))
    keep_files: int = field(default=5, metadata=_rule(_between(0, 100)))


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (off when ``listen`` is empty)."""

    listen: str = field(default="", metadata=_rule(_listen_address))
    #: The endpoint has no authentication: an address that is not loopback must
    #: be allowed explicitly.
    allow_remote: bool = False
    #: Serve the per-VM series (VM names, memory) over HTTP too. Off: any local
    #: user can read the port, while the control socket is for group ebb only.
    per_vm: bool = False


@dataclass(frozen=True)
class EbbdConfig:
    """The whole validated configuration; ``source`` is the file it came from (or None)."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    host: HostConfig = field(default_factory=HostConfig)
    pressure: PressureConfig = field(default_factory=PressureConfig)
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)
    guests: GuestsConfig = field(default_factory=GuestsConfig)
    governor: GovernorSection = field(default_factory=GovernorSection)
    balloon: BalloonConfig = field(default_factory=BalloonConfig)
    ksm: KsmConfig = field(default_factory=KsmConfig)
    memtune: MemtuneConfig = field(default_factory=MemtuneConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain-JSON view (paths as strings), e.g. for ``ebbctl status`` or logs."""
        out: dict[str, dict[str, Any]] = {}
        for name, section_type in SECTIONS.items():
            section = getattr(self, name)
            out[name] = {
                f.name: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(section_type)
                for v in [getattr(section, f.name)]
            }
        return out


#: Section name in the file -> dataclass. Order is the order in docs/configuration.md.
SECTIONS: dict[str, type] = {
    "daemon": DaemonConfig,
    "host": HostConfig,
    "pressure": PressureConfig,
    "hypervisor": HypervisorConfig,
    "guests": GuestsConfig,
    "governor": GovernorSection,
    "balloon": BalloonConfig,
    "ksm": KsmConfig,
    "memtune": MemtuneConfig,
    "trace": TraceConfig,
    "metrics": MetricsConfig,
}


# --- loading --------------------------------------------------------------------


def load_config(path: Path | str | None = None) -> EbbdConfig:
    """Read and validate the config file.

    ``None`` means :data:`DEFAULT_CONFIG_PATH`, and a missing default file gives all
    defaults. A path given explicitly (``ebbd --config PATH``) must exist, so that a
    typo is not silently replaced by defaults.

    Raises :class:`ConfigError` naming the file and the key for anything wrong.
    """
    explicit = path is not None and Path(path) != DEFAULT_CONFIG_PATH
    file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{file}: config file not found (check the --config path)") from None
        LOG.info("no config file at %s: using defaults", file)
        return config_from_dict({}, source=None)
    except OSError as err:
        raise ConfigError(f"{file}: cannot read config file: {err.strerror}") from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text: {err}") from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: not valid TOML: {err}") from err
    return config_from_dict(data, source=file)


def config_from_dict(data: Mapping[str, Any], source: Path | None = None) -> EbbdConfig:
    """Validate an already-parsed TOML document (what :func:`load_config` does after reading)."""
    where = str(source) if source is not None else "<config>"
    sections: dict[str, Any] = {}
    for section_name, table in data.items():
        section_type = SECTIONS.get(section_name)
        if section_type is None:
            raise ConfigError(
                f"{where}: unknown section [{section_name}] "
                f"(known: {', '.join(SECTIONS)})"
            )
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: {section_name}: must be a [table], got {table!r}")
        sections[section_name] = _build_section(section_name, section_type, table, where)
    config = EbbdConfig(**sections, source=source)
    _check_across_keys(config, where)
    return config


def _build_section(name: str, section_type: type, table: Mapping[str, Any], where: str) -> Any:
    fields_by_name = {f.name: f for f in dataclasses.fields(section_type)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        f = fields_by_name.get(key)
        if f is None:
            raise ConfigError(
                f"{where}: {name}.{key}: unknown key "
                f"(known in [{name}]: {', '.join(fields_by_name)})"
            )
        values[key] = _convert(f"{name}.{key}", f, value, where)
    return section_type(**values)


#: The type of keys holding a list of strings (a tuple, so that sections stay hashable).
STRINGS = tuple[str, ...]

_TYPE_WORDS: dict[Any, str] = {
    bool: "true or false", int: "an integer", float: "a number", str: "a string",
    Path: "a path string", STRINGS: "a list of strings",
}


def _convert(dotted: str, f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    kind: Any = f.type  # real classes: this module does not postpone annotations
    ok: bool
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ConfigError(f"{where}: {dotted}: must be a finite number, got {value!r}")
    elif kind == STRINGS:
        ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(
            f"{where}: {dotted}: must be {_TYPE_WORDS.get(kind, kind)}, got {value!r}"
        )
    check = f.metadata.get("check")
    if check is not None:
        problem = check(value)
        if problem:
            raise ConfigError(f"{where}: {dotted}: {problem}")
    if kind is float:
        return float(value)
    if kind is Path:
        return Path(value)
    if kind == STRINGS:
        return tuple(value)
    if f.name == "log_level":
        return value.lower()
    return value


def _check_across_keys(config: EbbdConfig, where: str) -> None:
    """Rules that involve two keys; each names the key to change."""
    hv = config.hypervisor
    if hv.reconnect_max_s < hv.reconnect_initial_s:
        raise ConfigError(
            f"{where}: hypervisor.reconnect_max_s: must be >= hypervisor.reconnect_initial_s "
            f"({hv.reconnect_initial_s}), got {hv.reconnect_max_s}"
        )
    gs = config.guests
    if gs.stale_after_s * 1000 <= gs.report_interval_ms:
        raise ConfigError(
            f"{where}: guests.stale_after_s: must be longer than guests.report_interval_ms "
            f"({gs.report_interval_ms} ms), got {gs.stale_after_s} s"
        )
    if gs.cut_off_backoff_max_s < gs.cut_off_backoff_s:
        raise ConfigError(
            f"{where}: guests.cut_off_backoff_max_s: must be >= guests.cut_off_backoff_s "
            f"({gs.cut_off_backoff_s}), got {gs.cut_off_backoff_max_s}"
        )
    pr = config.pressure
    for low, high, what in (
        ("available_low_share", "available_high_share", ">"),
        ("available_high_share", "available_critical_share", ">"),
        ("swap_low_kib_s", "swap_high_kib_s", "<"),
        ("swap_high_kib_s", "swap_critical_kib_s", "<"),
        ("psi_some_low", "psi_some_high", "<"),
    ):
        a, b = getattr(pr, low), getattr(pr, high)
        if (what == ">" and not a > b) or (what == "<" and not a < b):
            raise ConfigError(
                f"{where}: pressure.{low}: must be {'above' if what == '>' else 'below'} "
                f"pressure.{high} ({b}): each level starts further than the one before, "
                f"got {a}"
            )
    gv = config.governor
    if gv.uncooperative_after_s < gv.stuck_after_s:
        raise ConfigError(
            f"{where}: governor.uncooperative_after_s: must be >= governor.stuck_after_s "
            f"({gv.stuck_after_s}), got {gv.uncooperative_after_s}"
        )
    if gv.backoff_max_s < gv.backoff_initial_s:
        raise ConfigError(
            f"{where}: governor.backoff_max_s: must be >= governor.backoff_initial_s "
            f"({gv.backoff_initial_s}), got {gv.backoff_max_s}"
        )
