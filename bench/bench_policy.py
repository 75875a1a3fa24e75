"""Time per tick of the default policies plus the governor.

For 1, 32 and 1000 guests with 10 samples of history each, prints the median
and 95th percentile time of one tick: policy evaluation (PolicyRunner.evaluate)
plus the governor (building its views and Governor.decide). Half the guests
have an agent (some offering, some needing), half have balloon statistics only;
the host is under pressure so every branch of the policies runs.
Targets (issue 3): <= 2 ms at 32 guests, <= 50 ms at 1000 guests.

Run: .venv/bin/python bench/bench_policy.py [--ticks N] [--policy cooperative|classic|both]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import List, Tuple

from ebb.host.governor import Governor, guest_view_from_entity
from ebb.host.policies import POLICY_NAMES, policy_dir
from ebb.host.policy import Entity, PolicyInput, PolicyRunner

GiB = 1024 * 1024
HISTORY = 10


def make_input(n_guests: int, seed: int = 1) -> PolicyInput:
    rng = random.Random(seed)
    host_samples = []
    total = 256 * GiB
    for _ in range(HISTORY):
        host_samples.append(
            {
                "mem_available": total,
                "mem_unused": int(total * 0.05),
                "mem_free": int(total * rng.uniform(0.10, 0.18)),
                "ksm_pages_to_scan": 500,
                "ksm_shareable": int(total * 0.9),
                "ksm_run": 1,
                "ksm_pages_shared": 1000,
                "swap_in": 0,
                "swap_out": 0,
            }
        )
    guests: List[Entity] = []
    for i in range(n_guests):
        maximum = rng.choice([2, 4, 8]) * GiB
        cur = int(maximum * rng.uniform(0.6, 1.0))
        has_agent = i % 2 == 0
        samples = []
        for _ in range(HISTORY):
            s = {
                "balloon_cur": cur,
                "balloon_max": maximum,
                "balloon_min": 512 * 1024,
                "mem_available": cur,
                "mem_unused": int(cur * rng.uniform(0.0, 0.5)),
                "mem_free": int(cur * rng.uniform(0.3, 0.6)),
                "major_fault": 1000,
                "swap_in": 0,
                "rss": cur,
                "agent_connected": 1 if has_agent else 0,
            }
            if has_agent:
                s.update(
                    {
                        "report_age": rng.uniform(0.1, 2.0),
                        "offer": rng.choice([0, 0, 64 * 1024, 256 * 1024]),
                        "need": rng.choice([0, 0, 0, 0, 128 * 1024]),
                        "need_urgency": 0,
                        "psi_some_avg10": rng.choice([0.0, 0.5, 15.0]),
                        "psi_full_avg10": 0.0,
                        "cache": int(cur * 0.2),
                        "major_fault_rate": rng.uniform(0, 50),
                        "swap_in_rate": 0,
                    }
                )
            samples.append(s)
        guests.append(Entity({"name": f"vm{i:04d}", "uuid": f"uuid-{i}"}, samples))
    return PolicyInput(Entity({"name": "host"}, host_samples), guests)


def fresh_input(inp: PolicyInput) -> PolicyInput:
    # The daemon builds new entities every tick (StatAvg caches are per entity).
    return PolicyInput(
        Entity(inp.host.props, inp.host.samples),
        [Entity(g.props, g.samples) for g in inp.guests],
    )


def bench(policy: str, n_guests: int, ticks: int) -> Tuple[List[float], List[float]]:
    runner = PolicyRunner()
    errors = runner.reload(policy_dir(policy))
    assert not errors, errors
    governor = Governor()
    base = make_input(n_guests)
    inputs = [fresh_input(base) for _ in range(ticks + 2)]
    wall: List[float] = []
    cpu: List[float] = []
    for k, inp in enumerate(inputs):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        ev = runner.evaluate(inp)
        views = [guest_view_from_entity(g) for g in inp.guests]
        governor.decide(float(k), views, ev.proposed_targets())
        dt = time.perf_counter() - t0
        dc = time.thread_time() - c0
        if k >= 2:  # first ticks warm caches
            wall.append(dt)
            cpu.append(dc)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=0, help="ticks per size (default: by size)")
    parser.add_argument("--policy", choices=[*POLICY_NAMES, "both"], default="both")
    args = parser.parse_args()
    policies = POLICY_NAMES if args.policy == "both" else (args.policy,)
    print("time per tick = policy evaluation + governor; CPU = this thread's CPU time")
    print("(on a shared machine the wall figures include waiting for a core)")
    print(
        f"{'policy':<12} {'guests':>6} {'ticks':>6} {'CPU med ms':>11} {'CPU p95 ms':>11} "
        f"{'wall med ms':>12} {'us/guest':>9}"
    )
    for policy in policies:
        for n in (1, 32, 1000):
            ticks = args.ticks or {1: 500, 32: 200, 1000: 30}[n]
            wall, cpu = bench(policy, n, ticks)
            cpu_sorted = sorted(cpu)
            med = statistics.median(cpu) * 1000
            p95 = cpu_sorted[min(len(cpu) - 1, int(len(cpu) * 0.95))] * 1000
            wall_med = statistics.median(wall) * 1000
            print(
                f"{policy:<12} {n:>6} {ticks:>6} {med:>11.3f} {p95:>11.3f} "
                f"{wall_med:>12.3f} {med * 1000 / n:>9.1f}"
            )


if __name__ == "__main__":
    main()
