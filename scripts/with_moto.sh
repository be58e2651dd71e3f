#!/usr/bin/env bash
# Runs a command with the moto AWS emulator on 127.0.0.1 (a free port), with the endpoint and
# dummy credentials exported; stops the emulator afterwards. Tests never touch a real account.
set -euo pipefail
MOTO=${MOTO:-.venv-moto/bin/moto_server}
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p .deps
"$MOTO" -H 127.0.0.1 -p "$port" > .deps/moto.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null && break
    sleep 0.1
done
# Batch jobs complete without Docker (for the Batch adapter's tests).
python3 -c "import json, urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/moto-api/config', data=json.dumps({'batch': {'use_docker': False}}).encode(), method='POST', headers={'Content-Type': 'application/json'}))" \
    || { echo "moto did not start; see .deps/moto.log"; exit 1; }
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1
unset AWS_PROFILE AWS_SESSION_TOKEN
eval "$(.venv-moto/bin/python scripts/moto_setup.py)"
echo "AWS emulator (moto) on $AWS_ENDPOINT_URL"
"$@"
