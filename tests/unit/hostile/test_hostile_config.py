"""Hostile config files: every number ebbd accepts must work, every other is refused
at load with the key named (never a thread that dies later, or an OverflowError)."""

from __future__ import annotations

import dataclasses
import struct
import threading
from pathlib import Path

import pytest
from ebb.host.config import SECTIONS, ConfigError, EbbdConfig, load_config, numeric_ranges
from ebb.host.settings import channel_limits, engine_settings, governor_config
from ebb.protocol import (
    REPORT_INTERVAL_MS_MAX,
    REPORT_INTERVAL_MS_MIN,
    ValidationError,
    Welcome,
    encode_message,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"

#: TOML spellings of the values a careless or hostile administrator tries.
EXTREMES = ("0", "-1", "1e-9", "1e10", str(2**40), "nan", "inf", "-inf")

NUMERIC_KEYS = [
    (section, f.name)
    for section, section_type in SECTIONS.items()
    for f in dataclasses.fields(section_type)
    if f.type in (int, float)
]


def _wait_accepts(seconds: float) -> None:
    """What every ``Event.wait``/``stop.wait`` in ebbd does with a duration: a free
    lock is taken at once, but the timeout is checked against the platform first."""
    lock = threading.Lock()
    assert lock.acquire(timeout=seconds)
    lock.release()


def _works(config: EbbdConfig) -> None:
    """Build what ebbd builds from the config and use the values as the code does."""
    governor_config(config)
    channel_limits(config)
    engine_settings(config)
    for section in SECTIONS:
        values = getattr(config, section)
        for f in dataclasses.fields(values):
            value = getattr(values, f.name)
            if f.name.endswith("_s") and f.type in (int, float):
                _wait_accepts(float(value))
    # The channel thread sends this in every welcome.
    encode_message(Welcome(protocol_version=1, report_interval_ms=config.guests.report_interval_ms,
                           capabilities=()))
    # libvirt's setMemoryStatsPeriod takes a C int.
    struct.pack("i", config.hypervisor.stats_period_s)
    assert config.governor.default_floor_mib * 1024 < 2**53
    assert config.trace.keep_files <= 100


@pytest.mark.parametrize("section,key", NUMERIC_KEYS, ids=[f"{s}.{k}" for s, k in NUMERIC_KEYS])
def test_extreme_numbers_are_refused_with_the_key_or_work(
    tmp_path: Path, section: str, key: str
) -> None:
    for text in EXTREMES:
        path = tmp_path / "ebbd.toml"
        path.write_text(f"[{section}]\n{key} = {text}\n", encoding="utf-8")
        try:
            config = load_config(path)
        except ConfigError as err:
            assert f"{path}: " in str(err)
            assert f"{section}.{key}" in str(err), (text, str(err))
            continue
        try:
            _works(config)
        except Exception as err:  # pragma: no cover - the failure message is the point
            pytest.fail(f"{section}.{key} = {text} was accepted but fails: {err!r}")


@pytest.mark.parametrize(
    "text,key",
    [
        ("[guests]\nreport_interval_ms = 4000000\n", "guests.report_interval_ms"),
        ("[hypervisor]\nrelist_interval_s = 1e10\n", "hypervisor.relist_interval_s"),
        (f"[hypervisor]\nstats_period_s = {2**40}\n", "hypervisor.stats_period_s"),
        ("[trace]\nkeep_files = 1000000\n", "trace.keep_files"),
    ],
)
def test_values_that_used_to_fail_later_are_refused_at_load(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "ebbd.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{key}: must be <="):
        load_config(path)


def test_report_interval_bounds_are_the_protocols() -> None:
    assert numeric_ranges()["guests.report_interval_ms"] == (
        f"from {REPORT_INTERVAL_MS_MIN} to {REPORT_INTERVAL_MS_MAX}"
    )
    encode_message(Welcome(protocol_version=1, report_interval_ms=REPORT_INTERVAL_MS_MAX,
                           capabilities=()))
    with pytest.raises(ValidationError):
        Welcome(protocol_version=1, report_interval_ms=REPORT_INTERVAL_MS_MAX + 1,
                capabilities=())


def test_every_numeric_key_has_a_range_and_the_docs_print_it() -> None:
    ranges = numeric_ranges()
    assert {f"{s}.{k}" for s, k in NUMERIC_KEYS} == set(ranges)
    text = DOCS.read_text(encoding="utf-8")
    for key, accepted in ranges.items():
        assert f"| `{key}` | {accepted} |" in text, f"docs/configuration.md: {key}: {accepted}"
