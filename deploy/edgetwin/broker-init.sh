#!/bin/sh
# One-shot start of the Compose stack (service broker-init): the broker's ACL and password
# files and every identity's credentials, from the gateway's config, generated here at first
# start into the `secrets` volume, never committed. `edgetwin broker-acl` keeps the passwords
# it finds, so a restart of the stack changes none; it mints them for new devices only.
# Also the API token, once.
set -eu
dir=${EDGETWIN_SECRETS_DIR:-/var/lib/edgetwin}
edgetwin broker-acl --config "${EDGETWIN_GATEWAY_CONFIG:-/etc/edgetwin/gateway.toml}" --out "$dir/broker"
if [ ! -s "$dir/api.env" ]; then
    umask 077
    python -c 'import secrets; print("EDGETWIN_API_TOKEN=" + secrets.token_urlsafe(24))' \
        > "$dir/api.env.new"
    mv "$dir/api.env.new" "$dir/api.env"
fi
