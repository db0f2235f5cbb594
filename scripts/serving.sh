# shellcheck shell=bash
# Sourced by the scripts that start `tpsgap serve` on ports of its own
# choosing. `serving LOG` waits (up to 10 s) for the line the server logs
# once bound and for its API to answer, and sets `grpc` and `api`
# (host:port) from that line; when the server does not come up it prints
# the log and fails.
serving() {
  local line
  for _ in $(seq 100); do
    line=$(grep -m1 'tpsgap serving' "$1" || true)
    grpc=$(sed -n 's/.*grpc=\([0-9.:]*\).*/\1/p' <<<"$line")
    api=$(sed -n 's/.* api=\([0-9.:]*\).*/\1/p' <<<"$line")
    [ -n "$grpc" ] && [ -n "$api" ] && curl -fs -o /dev/null "http://$api/readyz" && return 0
    sleep 0.1
  done
  cat "$1" >&2
  return 1
}
