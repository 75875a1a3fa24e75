"""Time per tick of the default policies plus the governor.

For 1, 32 and 1000 guests with 10 samples of history each, prints the median
and 95th percentile time of one tick: policy evaluation (PolicyRunner.evaluate)
plus the governor (building its views and Governor.decide), all through
host/tick.py's plan_tick as ebbd runs it, and the two parts separately. Half
the guests have an agent (some offering, some needing), half have balloon
statistics only; the host is under pressure so every branch of the
policies runs. Targets: <= 2 ms at 32 guests, <= 50 ms at 1000 guests (median).

``--compare OLD_TREE`` measures an earlier checkout (for example
``git worktree add --detach /tmp/ebb-old HEAD~3``) against this one in the same
run: rounds alternate old and new in fresh processes, so the load of a shared
machine falls on both alike, and the table gives the ratio old/new.

``--hostile`` instead times how soon the sandbox stops hostile policies (the
repeated squaring of the hardening review, a SetVar that feeds on itself, a
debug flood): the time to the PolicyError, and its message.

Run: .venv/bin/python bench/bench_policy.py [--ticks N] [--policy cooperative|classic|both]
     [--sizes 1,32,1000] [--compare OLD_TREE [--rounds R]] [--hostile]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence

from ebb.host.governor import Governor
from ebb.host.policies import POLICY_NAMES, policy_dir
from ebb.host.policy import Entity, PolicyError, PolicyInput, PolicyRunner, load_policy_texts
from ebb.host.policy.program import Evaluation
from ebb.host.tick import TickInput, guest_views, host_spare_from_policy, plan_tick

GiB = 1024 * 1024
HISTORY = 10
SIZES = (1, 32, 1000)
DEFAULT_TICKS = {1: 500, 32: 200, 1000: 30}
#: Figures per tick, in seconds of this thread's CPU time (wall: elapsed).
PARTS = ("cpu", "policy_cpu", "governor_cpu", "wall")


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


def bench(policy: str, n_guests: int, ticks: int) -> Dict[str, List[float]]:
    """Per-tick figures (seconds) for each of PARTS, the first two warm-up ticks left out."""
    runner = PolicyRunner()
    errors = runner.reload(policy_dir(policy))
    assert not errors, errors
    governor = Governor()
    base = make_input(n_guests)
    inputs = [fresh_input(base) for _ in range(ticks + 2)]
    out: Dict[str, List[float]] = {part: [] for part in PARTS}
    timed = _TimedPolicy(runner)
    reserve = governor.config.host_reserve_share
    for k, inp in enumerate(inputs):
        c0 = time.thread_time()
        t0 = time.perf_counter()
        # The daemon's planning of a tick (host/tick.py), views built as ebbd does.
        plan = plan_tick(
            TickInput(float(k), inp, guest_views(inp), host_spare_from_policy(inp, reserve)),
            timed, governor,
        )
        governor.commit(plan.all_applied())
        dt = time.perf_counter() - t0
        c2 = time.thread_time()
        if k >= 2:  # first ticks warm caches
            out["cpu"].append(c2 - c0)
            out["policy_cpu"].append(timed.cpu_s)
            out["governor_cpu"].append(c2 - c0 - timed.cpu_s)
            out["wall"].append(dt)
    return out


class _TimedPolicy:
    """The runner, with the CPU time of its last evaluation (the policy part of a tick)."""

    def __init__(self, runner: PolicyRunner) -> None:
        self.runner = runner
        self.cpu_s = 0.0

    def evaluate(self, inp: PolicyInput) -> Evaluation:
        c0 = time.thread_time()
        try:
            return self.runner.evaluate(inp)
        finally:
            self.cpu_s = time.thread_time() - c0


def med_ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1000


def p95_ms(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))] * 1000


def run_all(policies: Sequence[str], sizes: Sequence[int], ticks: int) -> Dict[str, object]:
    results: Dict[str, object] = {}
    for policy in policies:
        for n in sizes:
            results[f"{policy}/{n}"] = bench(policy, n, ticks or DEFAULT_TICKS.get(n, 30))
    return results


def print_table(results: Dict[str, Dict[str, List[float]]]) -> None:
    print("time per tick = policy evaluation + governor; CPU = this thread's CPU time")
    print("(on a shared machine the wall figures include waiting for a core)")
    print(
        f"{'policy':<12} {'guests':>6} {'ticks':>6} {'CPU med ms':>11} {'CPU p95 ms':>11} "
        f"{'policy ms':>10} {'governor ms':>12} {'wall med ms':>12} {'us/guest':>9}"
    )
    for key, r in results.items():
        policy, n = key.split("/")
        med = med_ms(r["cpu"])
        print(
            f"{policy:<12} {n:>6} {len(r['cpu']):>6} {med:>11.3f} {p95_ms(r['cpu']):>11.3f} "
            f"{med_ms(r['policy_cpu']):>10.3f} {med_ms(r['governor_cpu']):>12.3f} "
            f"{med_ms(r['wall']):>12.3f} {med * 1000 / int(n):>9.1f}"
        )


def package_tree(old_tree: Path, into: Path) -> Path:
    """A directory that makes ``import ebb.*`` load an old checkout's sources."""
    root = into / "pkgs"
    (root / "ebb").mkdir(parents=True)
    for pkg in ("protocol", "guest", "host"):
        source = old_tree / pkg
        if not source.is_dir():
            raise SystemExit(f"{old_tree} is not an ebb checkout (no {pkg}/); give a worktree")
        (root / "ebb" / pkg).symlink_to(source.resolve())
    return root


def measure_in_child(argv: List[str], pythonpath: str) -> Dict[str, Dict[str, List[float]]]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--json", *argv]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    data: Dict[str, Dict[str, List[float]]] = json.loads(done.stdout)
    return data


def compare(
    old_tree: Path, policies: Sequence[str], sizes: Sequence[int], ticks: int, rounds: int
) -> None:
    runs: Dict[str, Dict[str, Dict[str, List[float]]]] = {"old": {}, "new": {}}
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        old_path = str(package_tree(old_tree, Path(tmp)))
        for policy in policies:
            for n in sizes:
                argv = ["--policy", policy, "--sizes", str(n), "--ticks", str(ticks)]
                for i in range(rounds):
                    # Short alternating runs, the order swapped every round, so
                    # the machine's changing load falls on both sides alike.
                    order = [("old", old_path), ("new", "")]
                    for side, path in order if i % 2 == 0 else order[::-1]:
                        for key, r in measure_in_child(argv, path).items():
                            merged = runs[side].setdefault(key, {part: [] for part in PARTS})
                            for part in PARTS:
                                merged[part].extend(r[part])
    print(f"old = {old_tree}, new = this checkout; {rounds} alternating rounds per size")
    print("this thread's CPU time per tick (ms), median and minimum; ratio = old / new")
    print("(the governor is the same code on both sides unless it changed: a control)")
    print(
        f"{'policy':<12} {'guests':>6} {'part':<9} {'old med':>9} {'new med':>9} {'ratio':>6} "
        f"{'old min':>9} {'new min':>9} {'ratio':>6}"
    )
    labels = {"cpu": "tick", "policy_cpu": "policy", "governor_cpu": "governor"}
    for key in runs["new"]:
        policy, n = key.split("/")
        for part, label in labels.items():
            old, new = runs["old"][key][part], runs["new"][key][part]
            old_med, new_med = med_ms(old), med_ms(new)
            old_min, new_min = min(old) * 1000, min(new) * 1000
            print(
                f"{policy:<12} {n:>6} {label:<9} {old_med:>9.3f} {new_med:>9.3f} "
                f"{old_med / new_med:>6.2f} {old_min:>9.3f} {new_min:>9.3f} "
                f"{old_min / new_min:>6.2f}"
            )


HOSTILE = {
    "squaring": "(def sq (x n) (if (> n 0) (sq (* x x) (- n 1)) x)) (sq 3 40)",
    "setvar-doubling": '(Host.SetVar "x" (with Guests g (Host.GetVar "x")))',
    "debug-flood": '(with Guests a (with Guests b { (debug "%s" a b) 0 }))' % ("x" * 4000),
    "busy-recursion": "(def f (n) (if (> n 0) (+ (f (- n 1)) (f (- n 1))) 0)) (f 40)",
}


def hostile(n_guests: int = 32, ticks: int = 40) -> None:
    """Wall time until each hostile policy is stopped (or its slowest tick)."""
    print(f"hostile policies, {n_guests} guests: wall time per tick until the sandbox stops them")
    base = make_input(n_guests)
    for name, text in HOSTILE.items():
        runner = PolicyRunner(load_policy_texts([(f"{name}.policy", text)]))
        slowest = 0.0
        outcome = "no error"
        for tick in range(ticks):
            t0 = time.perf_counter()
            try:
                ev = runner.evaluate(fresh_input(base))
            except PolicyError as err:
                slowest = max(slowest, time.perf_counter() - t0)
                outcome = f"tick {tick + 1}: {err}"
                break
            slowest = max(slowest, time.perf_counter() - t0)
            outcome = f"{tick + 1} ticks, debug {sum(len(d) for d in ev.debug)} characters"
        print(f"  {name:<16} slowest tick {slowest * 1000:9.2f} ms  {outcome[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ticks", type=int, default=0, help="ticks per size (default: by size)")
    parser.add_argument("--policy", choices=[*POLICY_NAMES, "both"], default="both")
    parser.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="guest counts, comma-separated"
    )
    parser.add_argument(
        "--compare", metavar="OLD_TREE", type=Path, help="an earlier checkout to measure too"
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="alternating rounds per size (--compare)"
    )
    parser.add_argument(
        "--hostile", action="store_true", help="time how soon hostile policies are stopped"
    )
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile:
        hostile()
        return
    policies = POLICY_NAMES if args.policy == "both" else (args.policy,)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.compare is not None:
        compare(args.compare, policies, sizes, args.ticks, args.rounds)
        return
    results = run_all(policies, sizes, args.ticks)
    if args.json:
        json.dump(results, sys.stdout)
        return
    print_table(results)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
