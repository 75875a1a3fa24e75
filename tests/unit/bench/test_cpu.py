"""bench/overcommit/cpu.py: CPU shares from /proc (a fixture tree here)."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "bench"
sys.path.insert(0, str(BENCH))

from overcommit import cpu  # noqa: E402


def test_host_busy_excludes_idle_and_iowait(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  100 5 45 800 50 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8\n")
    assert cpu.host_cpu_ticks(tmp_path) == (150, 1000)


def test_process_cpu_is_user_plus_system_even_with_spaces_in_its_name(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    fields = ["S"] + ["0"] * 10 + [str(3 * cpu.CLK_TCK), str(cpu.CLK_TCK)] + ["0"] * 30
    (tmp_path / "42" / "stat").write_text("42 (qemu (x) y) " + " ".join(fields) + "\n")
    assert cpu.process_cpu_s(42, tmp_path) == 4.0
    assert cpu.process_cpu_s(43, tmp_path) is None


def test_others_are_what_the_host_was_busy_with_beyond_the_measured_processes() -> None:
    # 2 CPUs busy 60 % of 10 s = 12 core-seconds = 120 % of a core; QEMU took 100 %,
    # ebbd 3 %, ksmd unknown: 17 % of a core went to something else.
    busy_ticks = 12 * cpu.CLK_TCK
    assert cpu.others_pct(busy_ticks, 10.0, [100.0, 3.0, None]) == 17.0
    # Rounding of the measured shares never makes "others" negative.
    assert cpu.others_pct(busy_ticks, 10.0, [121.0]) == 0.0
