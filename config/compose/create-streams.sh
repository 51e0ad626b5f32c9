#!/bin/sh
# Creates the streams of the compose stack, one JSON file each in DIR (the
# JetStream API's stream configuration, as `nats stream info --json` shows it
# under "config"; the file is named after the stream), with the nats CLI of
# nats-box. A stream that exists already is left as it is, so a second
# `docker compose up` changes nothing. NATS_URL names the server.
# Usage: create-streams.sh DIR
set -eu
for file in "$1"/*.json; do
    name="$(basename "$file" .json)"
    if nats stream info "$name" >/dev/null 2>&1; then
        echo "Stream $name exists"
    else
        nats stream add "$name" --config "$file"
    fi
done
