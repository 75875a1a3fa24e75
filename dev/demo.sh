#!/usr/bin/env bash
# make demo: a lab of real VMs, ebbd managing them, a load that creates memory
# pressure, and the live status view, so you can watch memory move.
#
#   ./dev/demo.sh                      until Ctrl-C, with `ebbctl top` (needs a terminal)
#   ./dev/demo.sh --duration 300       five minutes, printing the status every 10 s
#   ./dev/demo.sh --guests 3 --memory 512
#
# What happens: guests boot (ebb-agent in each); ebbd starts on them; one guest
# runs memknobs (a memory-touching workload whose size changes over time); every
# PHASE seconds a ballast process takes and locks host memory until only 15 % of
# it is freeable, and then gives it back. Under pressure KSM starts, and the
# guests give back what they freed (free page reporting) and cache that stayed
# cold (yields); balloons inflate only if the host gets critical. Without
# pressure KSM stops.
#
# Everything is put back on exit, Ctrl-C or error: ebbd stopped, the ballast
# gone (it also dies with the demo), hugepages and KSM settings as they were,
# the demo's guests and files removed.
set -euo pipefail
cd "$(dirname "$0")/.."

GUESTS=2
MEMORY=512
DURATION=""
PHASE=60
KEEP=0
usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    echo "options: --guests N --memory MIB --duration S --phase S --keep (leave the guests up)"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --guests) GUESTS=$2; shift 2 ;;
        --memory) MEMORY=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --phase) PHASE=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "demo: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }

./dev/bootstrap.sh

PY=.venv/bin/python
EBBCTL=.venv/bin/ebbctl
PREFIX=ebb-demo
STATE=/var/lib/ebb-lab
WORK=$STATE/demo
RUN=/run/ebb-demo
SOCK=$RUN/ebbd.sock
mkdir -p "$WORK" "$RUN"

# Hugepages, swap and KSM are host-wide: hold the host-memory lock (the one the
# e2e tests and the benchmark take) from before reading them until after they are
# put back, so two harnesses never shrink the host at once. fd 9 stays open in
# this shell until it exits; ebbd does not inherit it.
HOST_LOCK=/run/ebb-host-memory.lock
LOCK_TIMEOUT_S=${EBB_HOST_LOCK_TIMEOUT_S:-1800}
exec 9<>"$HOST_LOCK"
if ! flock -n 9; then
    read -r HOLDER_PID HOLDER_NAME < "$HOST_LOCK" || true
    HOLDER="pid ${HOLDER_PID:-unknown} (${HOLDER_NAME:-})"
    log "waiting for $HOST_LOCK held by $HOLDER (it is changing the host's memory; up to $LOCK_TIMEOUT_S s)"
    if ! flock -w "$LOCK_TIMEOUT_S" 9; then
        log "$HOST_LOCK is still held by $HOLDER after $LOCK_TIMEOUT_S s: wait for it to finish (or stop it), then run again"
        exit 1
    fi
fi
echo "$$ $PREFIX" > "$HOST_LOCK"

# What the demo changes, as it was before.
ORIG_HUGEPAGES=$(cat /proc/sys/vm/nr_hugepages)
ORIG_KSM_RUN=$(cat /sys/kernel/mm/ksm/run)
ORIG_KSM_PAGES=$(cat /sys/kernel/mm/ksm/pages_to_scan)
ORIG_KSM_SLEEP=$(cat /sys/kernel/mm/ksm/sleep_millisecs)
EBBD_PID=""
PRESSURE_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    log "cleaning up"
    [ -n "$PRESSURE_PID" ] && kill "$PRESSURE_PID" 2>/dev/null && wait "$PRESSURE_PID" 2>/dev/null
    if [ -n "$EBBD_PID" ] && kill -0 "$EBBD_PID" 2>/dev/null; then
        kill -TERM "$EBBD_PID"
        for _ in $(seq 1 100); do kill -0 "$EBBD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$EBBD_PID" 2>/dev/null || true
    fi
    echo "$ORIG_HUGEPAGES" > /proc/sys/vm/nr_hugepages || true
    echo "$ORIG_KSM_PAGES" > /sys/kernel/mm/ksm/pages_to_scan || true
    echo "$ORIG_KSM_SLEEP" > /sys/kernel/mm/ksm/sleep_millisecs || true
    echo "$ORIG_KSM_RUN" > /sys/kernel/mm/ksm/run || true
    if [ "$KEEP" = 1 ]; then
        log "guests left running (--keep): $EBBCTL lab down --prefix $PREFIX removes them"
    else
        $EBBCTL lab down --prefix "$PREFIX" || true
    fi
    rm -rf "$RUN"
    : > "$HOST_LOCK" || true  # no stale pid; the lock itself goes with this shell
    log "host put back: nr_hugepages $(cat /proc/sys/vm/nr_hugepages), KSM run $(cat /sys/kernel/mm/ksm/run); ebbd's log and trace are in $WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "booting $GUESTS guests of $MEMORY MiB (software emulation takes a minute or two)"
$EBBCTL lab up --prefix "$PREFIX" --guests "$GUESTS" --memory "$MEMORY"

cat > "$WORK/ebbd.toml" <<EOF
[daemon]
run_dir = "$RUN"
control_socket = "$SOCK"
policy_interval_s = 1.0

[guests]
report_interval_ms = 1000   # one report per tick

[hypervisor]
domains = ["$PREFIX-*"]     # the demo's guests only, never other VMs on this host

[trace]
path = "$WORK/trace.jsonl"
EOF
log "starting ebbd (log: $WORK/ebbd.log)"
.venv/bin/ebbd --config "$WORK/ebbd.toml" > "$WORK/ebbd.log" 2>&1 9>&- &
EBBD_PID=$!
for _ in $(seq 1 100); do
    [ -S "$SOCK" ] && $EBBCTL --socket "$SOCK" status >/dev/null 2>&1 && break
    kill -0 "$EBBD_PID" 2>/dev/null || { tail -20 "$WORK/ebbd.log" >&2; exit 1; }
    sleep 0.3
done

# The last guest runs a workload that grows and shrinks; the others idle.
$EBBCTL lab workload --prefix "$PREFIX" "$PREFIX-$GUESTS" --pattern "120M:40s,$((MEMORY * 55 / 100))M:40s"

# Host pressure on and off, every PHASE seconds, in the background.
pressure_loop() {
    local holder=""
    trap '[ -n "$holder" ] && kill "$holder" 2>/dev/null; exit 0' TERM
    while true; do
        sleep "$PHASE" & wait $!
        # Holds the memory until killed (and dies with this shell if it is killed).
        $PY -m ebb.lab.hostmem hold 0.15 3072 2>> "$WORK/phases.log" &
        holder=$!
        echo "$(date +%T) host being shrunk to 15% freeable memory (ballast pid $holder)" >> "$WORK/phases.log"
        sleep "$PHASE" & wait $!
        kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null || true
        holder=""
        echo "$(date +%T) host memory given back" >> "$WORK/phases.log"
    done
}
: > "$WORK/phases.log"
pressure_loop &
PRESSURE_PID=$!
log "pressure goes on and off every $PHASE s (see $WORK/phases.log)"

if [ -z "$DURATION" ] && [ -t 1 ]; then
    log "live view: q or Ctrl-C to stop the demo"
    $EBBCTL --socket "$SOCK" top || true
else
    end=$(( $(date +%s) + ${DURATION:-300} ))
    while [ "$(date +%s)" -lt "$end" ]; do
        echo; tail -1 "$WORK/phases.log" 2>/dev/null || true
        $EBBCTL --socket "$SOCK" top --once --width 100 || $EBBCTL --socket "$SOCK" status
        sleep 10
    done
fi
