# shellcheck shell=bash
# Shared helpers for deploy/local/* (sourced, not run): a background process with a pid file,
# started in its own session, stopped with SIGTERM then SIGKILL. No systemd needed.
# The caller sets NAME (for messages) before using these.

say() { echo "$NAME: $*" >&2; }
die() { say "error: $*"; exit 1; }

# alive PID -> the process exists and is not a zombie (an unreaped dead child still answers kill -0).
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local st; st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
  [[ -n "$st" && "$st" != Z ]]
}

# pid_alive PIDFILE MATCH -> prints the pid if the process lives and its command line holds
# MATCH (a path unique to this instance: guards against pid reuse and against other copies).
pid_alive() {
  local pidfile="$1" match="$2" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$match" || return 1
  echo "$pid"
}

# port_busy PORT -> true if something accepts TCP connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# spawn PIDFILE LOG CMD... -> starts CMD in the background in a new session (Ctrl-C in the
# calling shell does not reach it) with every fd redirected (a caller that captures our output
# does not hang on the child), and prints its pid.
spawn() {
  local pidfile="$1" log="$2"; shift 2
  rm -f "$pidfile"
  # shellcheck disable=SC2016  # $$ and $0/$@ belong to the inner shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >"$log" 2>&1 &
  local _
  for _ in $(seq 50); do [[ -s "$pidfile" ]] && break; sleep 0.1; done
  [[ -s "$pidfile" ]] || die "process did not start; log: $log"
  cat "$pidfile"
}

# stop_pid PIDFILE MATCH [GRACE_SECONDS] -> SIGTERM, wait, SIGKILL.
stop_pid() {
  local pidfile="$1" match="$2" grace="${3:-30}" pid _
  if ! pid="$(pid_alive "$pidfile" "$match")"; then rm -f "$pidfile"; say "not running"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 10))); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    say "still running after $grace s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  say "stopped (pid $pid)"
}

# wait_http URL PID TIMEOUT -> waits for HTTP 200 from URL while PID lives.
wait_http() {
  local url="$1" pid="$2" timeout="$3"
  python3 - "$url" "$pid" "$timeout" <<'PY'
import os, sys, time, urllib.request
url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline, last = time.monotonic() + timeout, "no answer"
while time.monotonic() < deadline:
    try:  # gone, or a zombie nobody reaped yet
        gone = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        gone = True
    if gone:
        print("process exited", file=sys.stderr); sys.exit(2)
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
            last = f"HTTP {r.status}"
    except Exception as exc:
        last = str(exc)
    time.sleep(0.2)
print(f"{url} not ready after {timeout:.0f} s: {last}", file=sys.stderr)
sys.exit(1)
PY
}

elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
