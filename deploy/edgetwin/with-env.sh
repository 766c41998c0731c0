#!/bin/sh
# with-env.sh FILE... -- COMMAND...: export the KEY=VALUE lines of each FILE, then exec COMMAND.
# The credentials live in a volume that broker-init fills at first start, so Compose's own
# env_file (read on the host, before any container runs) cannot load them.
set -eu
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
    set -a
    . "$1"
    set +a
    shift
done
[ "$#" -gt 0 ] && shift
exec "$@"
