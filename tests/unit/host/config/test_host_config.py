"""ebbd.toml: defaults, every key, and errors that name the file and the key."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from ebb.host import config as config_mod
from ebb.host.config import SECTIONS, ConfigError, EbbdConfig, load_config

DOCS = Path(__file__).resolve().parents[4] / "docs" / "configuration.md"


@pytest.fixture(autouse=True)
def _no_installed_policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default policy_dir depends on /etc/ebb/policy.d; tests pin it.
    monkeypatch.setattr(config_mod, "INSTALLED_POLICY_DIR", tmp_path / "no-such-policy.d")
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", tmp_path / "no-such-ebbd.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ebbd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_default_file_gives_all_defaults() -> None:
    cfg = load_config(None)
    assert cfg == EbbdConfig()
    assert cfg.hypervisor.domains == ("*",)  # every VM, as MOM does
    assert cfg.daemon.libvirt_uri == "qemu:///system"
    assert cfg.daemon.policy_interval_s == 2.0
    assert cfg.daemon.run_dir == Path("/run/ebb")
    assert cfg.daemon.control_socket == Path("/run/ebb/ebbd.sock")
    assert cfg.daemon.dry_run is False
    assert cfg.guests.report_interval_ms == 2000
    assert cfg.guests.stale_after_s == 5.0
    assert cfg.ksm.enabled is True
    assert cfg.memtune.soft_limit_uncooperative is False
    assert cfg.trace.path == ""
    assert cfg.metrics.listen == ""
    assert cfg.source is None


def test_default_policy_dir_is_the_packaged_cooperative_set() -> None:
    policy_dir = load_config(None).daemon.policy_dir
    assert policy_dir.name == "cooperative"
    assert sorted(policy_dir.glob("*.policy")), f"no policies in {policy_dir}"


def test_installed_policy_dir_wins_when_present(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "policy.d"
    installed.mkdir()
    monkeypatch.setattr(config_mod, "INSTALLED_POLICY_DIR", installed)
    assert load_config(None).daemon.policy_dir == installed


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "typo.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: config file not found")):
        load_config(missing)


def test_every_key_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
[daemon]
libvirt_uri = "qemu+ssh://host/system"
policy_interval_s = 5
policy_dir = "/srv/policies"
run_dir = "/var/run/ebb"
control_socket = "/var/run/ebb/ctl.sock"
dry_run = true
log_level = "DEBUG"

[host]
proc_root = "/fixture/proc"
sys_root = "/fixture/sys"
pressure_tick_threshold = 0.1

[pressure]
available_low_share = 0.3
available_high_share = 0.15
available_critical_share = 0.03
swap_low_kib_s = 32
swap_high_kib_s = 2048
swap_critical_kib_s = 32768
psi_some_low = 2.0
psi_some_high = 20.0
psi_full_critical = 5.0

[hypervisor]
stats_period_s = 5
relist_interval_s = 60
reconnect_initial_s = 0.5
reconnect_max_s = 10
qemu_run_dir = "/var/run/libvirt/qemu"
domains = ["web-*", "db[0-9]"]
manage_opted_out = true

[guests]
report_interval_ms = 500
stale_after_s = 3
heartbeat_interval_s = 10
flood_max_frames_per_s = 20
flood_max_bytes_per_s = 131072
cut_off_backoff_s = 5
cut_off_backoff_max_s = 60
connect_retry_s = 1
agent_channel = "org.ebb.bench.0"

[governor]
default_floor_mib = 768
max_change_share = 0.25
take_offers_at_once = false
max_deflate_share = 0.5
stall_psi_some_avg10 = 20
stall_major_faults_per_s = 500
stall_swap_in_per_s = 64
rollback_window_s = 45
rollback_major_faults_per_s = 50
rollback_swap_in_per_s = 25
rollback_psi_some_avg10 = 5
backoff_initial_s = 10
backoff_growth = 1.5
backoff_max_s = 100
backoff_reset_s = 600
stuck_after_s = 4
uncooperative_after_s = 16
uncooperative_retry_s = 120
host_reserve_share = 0.15

[balloon]
min_change_kib = 0

[ksm]
enabled = false

[memtune]
soft_limit_uncooperative = true

[trace]
path = "/var/log/ebb/trace.jsonl"
max_bytes = 1048576
keep_files = 2

[metrics]
listen = "127.0.0.1:9677"
allow_remote = true
per_vm = true
""")
    cfg = load_config(path)
    assert cfg.source == path
    assert cfg.daemon.libvirt_uri == "qemu+ssh://host/system"
    assert cfg.daemon.policy_interval_s == 5.0
    assert isinstance(cfg.daemon.policy_interval_s, float)
    assert cfg.daemon.policy_dir == Path("/srv/policies")
    assert cfg.daemon.control_socket == Path("/var/run/ebb/ctl.sock")
    assert cfg.daemon.dry_run is True
    assert cfg.daemon.log_level == "debug"
    assert cfg.host.proc_root == Path("/fixture/proc")
    assert cfg.host.pressure_tick_threshold == 0.1
    assert cfg.hypervisor.stats_period_s == 5
    assert cfg.hypervisor.domains == ("web-*", "db[0-9]")
    assert cfg.guests.report_interval_ms == 500
    assert cfg.guests.agent_channel == "org.ebb.bench.0"
    assert cfg.hypervisor.manage_opted_out is True
    assert cfg.governor.default_floor_mib == 768
    assert cfg.governor.uncooperative_after_s == 16.0
    assert cfg.balloon.min_change_kib == 0
    assert cfg.ksm.enabled is False
    assert cfg.memtune.soft_limit_uncooperative is True
    assert cfg.trace.path == "/var/log/ebb/trace.jsonl"
    assert cfg.metrics.listen == "127.0.0.1:9677"
    # Everything set in the file differs from the default: nothing was silently dropped.
    defaults = EbbdConfig()
    for name in SECTIONS:
        for f in dataclasses.fields(getattr(cfg, name)):
            assert getattr(getattr(cfg, name), f.name) != getattr(getattr(defaults, name),
                                                                  f.name), f"{name}.{f.name}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[daemon]\npolicy_interval_s = -1\n", "daemon.policy_interval_s: must be >= 0.1, got -1"),
        ("[daemon]\npolicy_interval_s = 0\n", "daemon.policy_interval_s: must be >= 0.1, got 0"),
        ("[daemon]\npolicy_interval_s = \"2s\"\n",
         "daemon.policy_interval_s: must be a number, got '2s'"),
        ("[daemon]\ndry_run = 1\n", "daemon.dry_run: must be true or false, got 1"),
        ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level: must be one of debug, info"),
        ("[daemon]\nrun_dir = \"run/ebb\"\n", "daemon.run_dir: must be an absolute path"),
        ("[daemon]\npolicy_intervall_s = 2\n", "daemon.policy_intervall_s: unknown key"),
        ("[deamon]\n", "unknown section [deamon]"),
        ("daemon = 3\n", "daemon: must be a [table], got 3"),
        ("[guests]\nreport_interval_ms = 1.5\n",
         "guests.report_interval_ms: must be an integer, got 1.5"),
        ("[guests]\nreport_interval_ms = true\n",
         "guests.report_interval_ms: must be an integer, got True"),
        ("[guests]\nreport_interval_ms = 10\n", "guests.report_interval_ms: must be >= 100"),
        ("[guests]\nstale_after_s = 0.5\n",
         "guests.stale_after_s: must be longer than guests.report_interval_ms"),
        ("[host]\npressure_tick_threshold = 1.5\n",
         "host.pressure_tick_threshold: must be a share in (0, 1], got 1.5"),
        ("[hypervisor]\nreconnect_max_s = 0.5\n",
         "hypervisor.reconnect_max_s: must be >= hypervisor.reconnect_initial_s"),
        ("[pressure]\navailable_high_share = 0.3\n",
         "pressure.available_low_share: must be above pressure.available_high_share (0.3)"),
        ("[pressure]\nswap_high_kib_s = 20000\n",
         "pressure.swap_high_kib_s: must be below pressure.swap_critical_kib_s (16384.0)"),
        ("[pressure]\npsi_some_high = 0\n", "pressure.psi_some_high: must be > 0, got 0"),
        ("[governor]\nuncooperative_after_s = 2\n",
         "governor.uncooperative_after_s: must be >= governor.stuck_after_s"),
        ("[governor]\nmax_change_share = 0\n", "governor.max_change_share: must be a share"),
        ("[governor]\nmax_deflate_share = 1.5\n", "governor.max_deflate_share: must be a share"),
        ("[governor]\nbackoff_growth = 0.5\n", "governor.backoff_growth: must be >= 1"),
        ("[governor]\nstall_psi_some_avg10 = 0\n", "governor.stall_psi_some_avg10: must be > 0"),
        ("[governor]\nuncooperative_retry_s = -1\n",
         "governor.uncooperative_retry_s: must be > 0"),
        ("[guests]\nflood_max_bytes_per_s = 1000\n",
         "guests.flood_max_bytes_per_s: must be >= 65536"),
        ("[governor]\ndefault_floor_mib = -5\n", "governor.default_floor_mib: must be >= 0"),
        ("[trace]\npath = \"trace.jsonl\"\n", "trace.path: must be an absolute path"),
        ("[metrics]\nlisten = \"9677\"\n", "metrics.listen: must be HOST:PORT"),
        ("[metrics]\nlisten = \"127.0.0.1:99999\"\n", "metrics.listen: must be HOST:PORT"),
        ("[daemon]\npolicy_interval_s = nan\n", "daemon.policy_interval_s: must be a finite"),
        ("[hypervisor]\ndomains = \"web-*\"\n",
         "hypervisor.domains: must be a list of strings, got 'web-*'"),
        ("[hypervisor]\ndomains = []\n",
         "hypervisor.domains: must name at least one pattern"),
        ("[hypervisor]\ndomains = [\"web-*\", 3]\n",
         "hypervisor.domains: must be a list of strings, got ['web-*', 3]"),
        ("[hypervisor]\ndomains = [\"web-*\", \"\"]\n",
         "hypervisor.domains: patterns must not be empty, got ['web-*', '']"),
        ("[hypervisor]\nmanage_opted_out = \"yes\"\n",
         "hypervisor.manage_opted_out: must be true or false, got 'yes'"),
        ("[guests]\nagent_channel = 0\n", "guests.agent_channel: must be a string, got 0"),
        ("[guests]\nagent_channel = \"\"\n",
         "guests.agent_channel: must be a virtio-serial port name"),
        ("[guests]\nagent_channel = \"../../etc/x\"\n",
         "guests.agent_channel: must be a virtio-serial port name"),
        ("[guests]\nagent_channel = \"org ebb\"\n",
         "guests.agent_channel: must be a virtio-serial port name"),
        (f"[guests]\nagent_channel = \"{'a' * 129}\"\n",
         "guests.agent_channel: must be a virtio-serial port name"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon\npolicy_interval_s = 2\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not valid TOML")):
        load_config(path)


def test_to_dict_is_plain_json() -> None:
    import json

    data = load_config(None).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["daemon"]["control_socket"] == "/run/ebb/ebbd.sock"
    assert data["hypervisor"]["domains"] == ["*"]


def test_configuration_doc_lists_every_key_with_its_default() -> None:
    text = DOCS.read_text(encoding="utf-8")
    defaults = EbbdConfig()
    for name, section_type in SECTIONS.items():
        assert f"[{name}]" in text, f"docs/configuration.md lacks [{name}]"
        for f in dataclasses.fields(section_type):
            row = re.search(rf"^\| `{f.name}` \|([^|]*)\|", text, re.M)
            assert row, f"docs/configuration.md lacks {name}.{f.name}"
            value = getattr(getattr(defaults, name), f.name)
            if f.name == "policy_dir":
                continue
            if isinstance(value, bool):
                shown_text = "true" if value else "false"
            elif isinstance(value, (str, Path)):
                shown_text = f'"{value}"'
            elif isinstance(value, tuple):
                shown_text = json.dumps(list(value))  # as written in TOML
            else:
                shown_text = str(value)
            assert f"`{shown_text}`" in row.group(1), (
                f"docs/configuration.md: default of {name}.{f.name} should read "
                f"{shown_text}, row says {row.group(1).strip()}")


def test_the_default_agent_channel_is_the_protocols_port() -> None:
    from ebb.host.hypervisor import AGENT_CHANNEL_NAME

    assert EbbdConfig().guests.agent_channel == AGENT_CHANNEL_NAME
    assert EbbdConfig().hypervisor.manage_opted_out is False
