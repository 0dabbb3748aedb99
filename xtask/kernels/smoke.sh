#!/bin/sh
# The smoke suite of `cargo xtask kernels`, run by busybox sh inside each VM (from
# init.sh) and, in a network namespace of its own, on the host. It prints progress on
# stdout and appends one `STEER-RESULT key=value` line per figure to $STEER_RESULTS;
# values that are JSON documents are put on one line. xtask/src/kernels/report.rs reads
# them. Every wait is bounded, so a kernel that misbehaves ends the suite, never hangs it.
#
# Environment: STEER_BIN (directory with steer, steer-testserver, steer-load),
# STEER_RESULTS (file), SMOKE_PORT (8080), SMOKE_TMP (work directory),
# SMOKE_LOAD_SECS (how long the load of the handovers runs, 30), SMOKE_DAEMON_ARGS
# (more daemon flags: `--netns all` in the VMs; on the host the daemon keeps to its own
# network namespace, away from other people's servers), STEER_STATE_DIR (the reloads in
# select-only mode use "$STEER_STATE_DIR-select", removed at the end).
set -u
BIN=${STEER_BIN:?}
OUT=${STEER_RESULTS:?}
PORT=${SMOKE_PORT:-8080}
W=${SMOKE_TMP:-/tmp/steer-smoke}
LOAD_SECS=${SMOKE_LOAD_SECS:-30}
HANDOVERS=10
RELOADS=5
ADDR=127.0.0.1:$PORT
RADDR=127.0.0.1:$((PORT + 1))
SELECT_DIR=${STEER_STATE_DIR:-/sys/fs/bpf/steer}-select
A=0
B=0
rm -rf "$W"
mkdir -p "$W"

say() { echo "smoke: $*"; }
result() { echo "STEER-RESULT $1=$2" >> "$OUT"; }
# A file's content on one line (JSON documents, stderr).
result_file() { result "$1" "$(tr '\n' ' ' < "$2")"; }
# Milliseconds since boot.
now_ms() {
    read -r up _ < /proc/uptime
    echo $(($(echo "$up" | tr -d .) * 10))
}
# wait_for FILE PATTERN SECONDS: until FILE holds a line matching PATTERN.
wait_for() {
    tries=$(($3 * 10))
    while [ "$tries" -gt 0 ]; do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
        tries=$((tries - 1))
    done
    return 1
}

# start_gen NAME [ADDR]: a test server generation on ADDR ($ADDR), its commands read from a
# FIFO that a `sleep` holds open; sets GEN_PID.
start_gen() {
    mkfifo "$W/$1.in"
    "$BIN/steer-testserver" --listen "${2:-$ADDR}" --gen "$1" < "$W/$1.in" > "$W/$1.out" 2>&1 &
    sleep 100000 > "$W/$1.in" &
    echo $! > "$W/$1.holder"
    if ! wait_for "$W/$1.out" "^ready pid=" 60; then
        say "generation $1 did not start: $(cat "$W/$1.out")"
        GEN_PID=0
        return 1
    fi
    GEN_PID=$(sed -n 's/^ready pid=\([0-9]*\).*/\1/p' "$W/$1.out")
}
# send NAME CMD: a command to a generation, waiting for its answer.
send() {
    echo "$2" > "$W/$1.in"
    wait_for "$W/$1.out" "^ok $2" 30 || say "generation $1 did not do $2: $(tail -n 1 "$W/$1.out")"
}
# stop_gen NAME PID: SIGTERM (the server closes its listeners and exits), then its holder.
stop_gen() {
    kill -TERM "$2" 2>/dev/null
    wait "$2" 2>/dev/null
    kill "$(cat "$W/$1.holder")" 2>/dev/null
}
# promote KEY PID: `steer promote`, its exit status, stderr and duration as results.
promote() {
    promote_t0=$(now_ms)
    "$BIN/steer" promote "$2" > "$W/$1.stdout" 2> "$W/$1.stderr"
    rc=$?
    result "$1_ms" $(($(now_ms) - promote_t0))
    result "$1_rc" "$rc"
    result "$1_stderr_lines" "$(grep -c . "$W/$1.stderr")"
    result_file "$1_stderr" "$W/$1.stderr"
    return $rc
}
# load KEY ARGS...: steer-load against $ADDR, its JSON report as a result.
load() {
    key=$1
    shift
    "$BIN/steer-load" --target "$ADDR" "$@" > "$W/$key.json" 2> "$W/$key.err"
    result "$key" "$(tr '\n' ' ' < "$W/$key.json")"
}
status() {
    "$BIN/steer" status --json > "$W/$1.json" 2> "$W/$1.err" && result_file "$1" "$W/$1.json"
}

# The loopback interface is down in a fresh VM and a fresh network namespace.
ip link set lo up
result kernel "$(uname -r)"
result started_ms "$(now_ms)"

say "steer check"
"$BIN/steer" check --json > "$W/check.json" 2> "$W/check.err"
result check_rc $?
result_file check "$W/check.json"
result_file check_stderr "$W/check.err"

say "steering: generations a and b listen, promote a, then b"
start_gen a && A=$GEN_PID
start_gen b && B=$GEN_PID
promote promote_a "$A"
load steer_a --concurrency 4 --requests 100 --timeout-ms 20000
promote promote_b "$B"
load steer_b --concurrency 4 --requests 100 --timeout-ms 20000

say "migration: b (active) stops accepting, 16 connections queue, a is promoted, b closes"
send b pause
"$BIN/steer-load" --target "$ADDR" --concurrency 16 --requests 16 --timeout-ms 60000 \
    > "$W/migrate.json" 2> "$W/migrate.err" &
MIGRATE_LOAD=$!
sleep 3
status status_queued
promote promote_back "$A"
send b close
wait $MIGRATE_LOAD
result migrate "$(tr '\n' ' ' < "$W/migrate.json")"
status status_migrated
send b exit
kill "$(cat "$W/b.holder")" 2>/dev/null

say "$HANDOVERS handovers under load ($LOAD_SECS s)"
"$BIN/steer-load" --target "$ADDR" --concurrency 4 --duration-secs "$LOAD_SECS" --timeout-ms 20000 \
    > "$W/handovers.json" 2> "$W/handovers.err" &
LOAD=$!
handovers_t0=$(now_ms)
old=a
old_pid=$A
promote_failed=0
i=1
while [ $i -le $HANDOVERS ]; do
    sleep 1
    if start_gen "h$i"; then
        promote "handover_$i" "$GEN_PID" > /dev/null || promote_failed=$((promote_failed + 1))
        stop_gen "$old" "$old_pid"
        old=h$i
        old_pid=$GEN_PID
        say "handover $i at $(($(now_ms) - handovers_t0)) ms"
    fi
    i=$((i + 1))
done
result handovers_done_ms $(($(now_ms) - handovers_t0))
result handover_promotes_failed $promote_failed
wait $LOAD
result handovers "$(tr '\n' ' ' < "$W/handovers.json")"
status status_end

say "daemon: its first log line names its event source"
# shellcheck disable=SC2086 # SMOKE_DAEMON_ARGS holds words
"$BIN/steer" daemon --port "$PORT" --any-process ${SMOKE_DAEMON_ARGS:-} --log-format json 2> "$W/daemon.log" &
DAEMON=$!
tries=600
while [ $tries -gt 0 ] && ! grep -q . "$W/daemon.log" && kill -0 $DAEMON 2>/dev/null; do
    sleep 0.1
    tries=$((tries - 1))
done
kill -TERM $DAEMON 2>/dev/null
wait $DAEMON
result daemon_rc $?
result daemon_first_line "$(head -n 1 "$W/daemon.log")"

say "$RELOADS reloads with \`steer reload\` in select-only mode, under load, on $RADDR"
# A state directory of its own, so that this kernel's own mode above stays as it was.
SEL="$BIN/steer --state-dir $SELECT_DIR"
start_gen r0 "$RADDR" && R0=$GEN_PID
$SEL promote --no-migrate "$R0" > "$W/select_promote.out" 2> "$W/select_promote.err"
result select_promote_rc $?
result_file select_promote_stderr "$W/select_promote.err"
"$BIN/steer-load" --target "$RADDR" --concurrency 4 --duration-secs "$((LOAD_SECS / 2))" --timeout-ms 20000 \
    > "$W/reloads.json" 2> "$W/reloads.err" &
RLOAD=$!
# The new generations read a FIFO held open (the test server exits at EOF of its stdin).
mkfifo "$W/reload.in"
sleep 100000 > "$W/reload.in" &
RHOLDER=$!
reloads_t0=$(now_ms)
rold=$R0
reloads_ok=0
drained=0
i=1
while [ $i -le $RELOADS ]; do
    sleep 1
    $SEL reload --old "$rold" --drain-timeout 10 -- "$BIN/steer-testserver" --listen "$RADDR" --gen "r$i" \
        < "$W/reload.in" > "$W/reload_$i.out" 2> "$W/reload_$i.err"
    rc=$?
    new=$(sed -n 's/^new generation: pid \([0-9]*\).*/\1/p' "$W/reload_$i.out")
    if [ "$rc" = 0 ] && [ -n "$new" ]; then
        reloads_ok=$((reloads_ok + 1))
        grep -q " drained in " "$W/reload_$i.out" && drained=$((drained + 1))
        rold=$new
    else
        result_file "reload_${i}_stderr" "$W/reload_$i.err"
    fi
    say "reload $i (rc $rc) at $(($(now_ms) - reloads_t0)) ms"
    i=$((i + 1))
done
result reloads_done_ms $(($(now_ms) - reloads_t0))
result reloads_total $RELOADS
result reloads_ok $reloads_ok
result reloads_drained $drained
wait $RLOAD
result reloads "$(tr '\n' ' ' < "$W/reloads.json")"
$SEL status --json > "$W/status_reloads.json" 2> "$W/status_reloads.err" && result_file status_reloads "$W/status_reloads.json"
kill "$rold" 2>/dev/null
$SEL detach > /dev/null 2>&1
rm -rf "$SELECT_DIR"
kill $RHOLDER 2>/dev/null
kill "$(cat "$W/r0.holder")" 2>/dev/null

stop_gen "$old" "$old_pid"
result done 1
say "done"
