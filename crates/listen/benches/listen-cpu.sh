#!/bin/bash
# CPU and memory of `listen` writing a stream to a WAV file, on loopback (docs/BENCHMARKS.md).
#
#   cargo build --release -p streamd -p listen
#   crates/listen/benches/listen-cpu.sh [LISTEN_BIN] [SECONDS] [INTERVAL] [FILE]
#
# Starts `streamd --loop` on 127.0.0.1 (any free port) and one `listen --output`, lets it play
# 2 s, then measures SECONDS of steady state from /proc: run time summed over the threads'
# schedstat (ns) and utime+stime from stat (clock ticks), voluntary+involuntary context
# switches, and peak RSS (VmHWM). Both processes are stopped by their PIDs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../../.." && pwd)
BIN=${1:-$ROOT/target/release/listen}
SECS=${2:-30}
IVL=${3:-20ms}
FILE=${4:-$ROOT/examples/assets/earshot-demo.mp3}
D=$(mktemp -d)
"$ROOT/target/release/streamd" --port 0 --bind 127.0.0.1 --file "$FILE" --loop \
    --interval "$IVL" 2>"$D/streamd.log" &
SP=$!
PORT=
for _ in $(seq 50); do
    PORT=$(grep -o '127.0.0.1:[0-9]*' "$D/streamd.log" | head -1 | cut -d: -f2 || true)
    [ -n "$PORT" ] && break
    sleep 0.1
done
"$BIN" --server "127.0.0.1:$PORT" --output "$D/out.wav" --quiet 2>"$D/listen.log" &
LP=$!
sleep 2
HZ=$(getconf CLK_TCK)
sched() { cat /proc/$LP/task/*/schedstat | awk '{s += $1} END {print s}'; }
ctx() { awk '/ctxt_switches/ {s += $2} END {print s}' /proc/$LP/status; }
ticks() { awk '{print $14 + $15}' /proc/$LP/stat; }
n0=$(sched); c0=$(ctx); k0=$(ticks); t0=$(date +%s.%N)
sleep "$SECS"
n1=$(sched); c1=$(ctx); k1=$(ticks); t1=$(date +%s.%N)
rss=$(awk '/VmHWM/ {print $2}' /proc/$LP/status)
kill -INT $LP; wait $LP || true
kill -INT $SP; wait $SP 2>/dev/null || true
awk -v n="$((n1 - n0))" -v k="$((k1 - k0))" -v hz="$HZ" -v c="$((c1 - c0))" \
    -v t0="$t0" -v t1="$t1" -v rss="$rss" -v ivl="$IVL" 'BEGIN {
    w = t1 - t0
    printf "interval %s: %.3f s CPU in %.1f s = %.2f%% of a core (stat: %.2f%%), %.0f context switches/s, peak RSS %.1f MiB\n",
        ivl, n / 1e9, w, 100 * n / 1e9 / w, 100 * k / hz / w, c / w, rss / 1024
}'
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -E ' (lost|underruns|concealed) ' "$D/listen.log" || true
rm -rf "$D"
