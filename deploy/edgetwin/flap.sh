#!/bin/sh
# flap.sh COMMAND...: run COMMAND for FLAP_UP seconds, stop it with SIGTERM, wait FLAP_DOWN
# seconds, again and again. agent-2 runs under it so that a hand-over shows: the stopped agent
# publishes its offline status, the gateway simulates its sensor on the same topic with the
# same seq numbering, and hands it back when the agent's birth arrives.
# A COMMAND that fails by itself (exit status other than 0) ends the loop with its status, so
# a bad config shows in `docker compose ps` instead of being retried for ever.
set -eu
up=${FLAP_UP:-150}
down=${FLAP_DOWN:-45}
pid=
# `docker compose stop`: pass SIGTERM on (timeout forwards it to the agent), wait for the
# agent's clean stop, exit 0. `|| true`: under set -e a failing wait would end the trap early.
stop() {
    if [ -n "$pid" ]; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" || true
    fi
    exit 0
}
trap stop TERM INT
while :; do
    timeout -s TERM "$up" "$@" &
    pid=$!
    status=0
    wait "$pid" || status=$?
    # 124: the time ran out and timeout stopped the command, as planned.
    if [ "$status" -ne 0 ] && [ "$status" -ne 124 ]; then
        exit "$status"
    fi
    echo "flap.sh: stopped for ${down} s; the gateway simulates meanwhile" >&2
    sleep "$down" &
    pid=$!
    wait "$pid" || true
done
