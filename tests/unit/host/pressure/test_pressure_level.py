"""The host pressure level: judged by what the host lacks, not by its cache share."""

from __future__ import annotations

import dataclasses
from typing import Any

from ebb.host.config import PressureConfig, config_from_dict
from ebb.host.pressure import (
    CRITICAL,
    HIGH,
    LOW,
    NONE,
    PressureThresholds,
    host_pressure,
    pressure_thresholds,
)

GIB = 1024 * 1024


def level(**overrides: Any) -> int:
    args: dict[str, Any] = {
        "mem_total_kib": 16 * GIB,
        "mem_available_kib": 8 * GIB,
        "freeable_kib": 8 * GIB,
        "swap_in_kib_s": 0.0,
        "swap_out_kib_s": 0.0,
        "psi_some_avg10": 0.0,
        "psi_full_avg10": 0.0,
    }
    args.update(overrides)
    return host_pressure(**args).level


def test_low_freeable_share_alone_is_not_pressure() -> None:
    # Free page reporting: little MemFree and cache, but the kernel can still
    # hand out a third of the host and nothing swaps or stalls.
    assert level(freeable_kib=GIB, mem_available_kib=6 * GIB) == NONE


def test_available_memory_sets_the_level() -> None:
    assert level(mem_available_kib=int(2.5 * GIB)) == LOW
    assert level(mem_available_kib=int(1.2 * GIB)) == HIGH
    assert level(mem_available_kib=GIB // 2) == CRITICAL


def test_swapping_host_is_under_pressure_even_with_memory_available() -> None:
    assert level(swap_out_kib_s=100.0) == LOW
    assert level(swap_in_kib_s=800.0, swap_out_kib_s=800.0) == HIGH
    assert level(swap_out_kib_s=20000.0) == CRITICAL


def test_a_few_pages_swapped_are_not_pressure() -> None:
    assert level(swap_out_kib_s=8.0) == NONE


def test_psi_stalls_raise_the_level() -> None:
    assert level(psi_some_avg10=2.0) == LOW
    assert level(psi_some_avg10=25.0) == HIGH
    assert level(psi_full_avg10=15.0) == CRITICAL


def test_the_worst_measure_wins_and_is_named() -> None:
    result = host_pressure(
        mem_total_kib=16 * GIB, mem_available_kib=3 * GIB, freeable_kib=3 * GIB,
        swap_in_kib_s=0.0, swap_out_kib_s=4096.0, psi_some_avg10=None, psi_full_avg10=None,
    )
    assert result.level == HIGH
    assert "swapping" in result.reason


def test_without_memavailable_the_freeable_memory_stands_in() -> None:
    assert level(mem_available_kib=None, freeable_kib=GIB) == HIGH
    result = host_pressure(
        mem_total_kib=16 * GIB, mem_available_kib=None, freeable_kib=GIB,
        swap_in_kib_s=0.0, swap_out_kib_s=0.0, psi_some_avg10=None, psi_full_avg10=None,
    )
    assert "freeable" in result.reason


def test_unknown_psi_and_empty_host_are_no_pressure() -> None:
    assert level(psi_some_avg10=None, psi_full_avg10=None) == NONE
    assert level(mem_total_kib=0, mem_available_kib=0) == NONE


def test_the_levels_follow_the_config_and_a_reload() -> None:
    # An operator who wants yields only once the host has less than 10 % available.
    config = config_from_dict({"pressure": {"available_low_share": 0.10,
                                            "available_high_share": 0.05,
                                            "available_critical_share": 0.02}})
    thresholds = pressure_thresholds(config.pressure)
    args = dict(mem_total_kib=1000, mem_available_kib=150, freeable_kib=150, swap_in_kib_s=0.0,
                swap_out_kib_s=0.0, psi_some_avg10=0.0, psi_full_avg10=0.0)
    assert host_pressure(**args).level == LOW  # 15 % < 20 % by default
    assert host_pressure(**args, thresholds=thresholds).level == NONE
    assert host_pressure(**{**args, "mem_available_kib": 40}, thresholds=thresholds).level == HIGH
    # Every threshold of the level function is a config key.
    assert set(PressureThresholds.__dataclass_fields__) == {
        f.name for f in dataclasses.fields(PressureConfig)}
