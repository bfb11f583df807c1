#!/usr/bin/env bash
# Install and run a local, headless Label Studio 1.23.2 in its own virtual environment (development and demos).
# Label Studio pins its own Django stack and label-studio-sdk, so it never shares ctphase's .venv.
#
#   scripts/label_studio.sh install                  # .cache/label-studio-venv (about a minute, 1 GB), idempotent
#   scripts/label_studio.sh start [--port 8089] [--data-dir .cache/label-studio-data] [--files-root DIR]
#
# start runs in the foreground until Ctrl-C. A new data dir gets a user admin@example.com with a random password
# and legacy API token, saved in <data-dir>.credentials.json and printed. --files-root enables local file serving
# (LOCAL_FILES_DOCUMENT_ROOT) for ctphase previews. The implementation (and the environment Label Studio gets,
# including ML_BLOCK_LOCAL_IP=false and SSRF_PROTECTION_ENABLED=false for a backend on 127.0.0.1) is in
# plugin/local_label_studio.py. Needs scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    echo "run scripts/setup.sh first (creates .venv)" >&2
    exit 1
fi
exec .venv/bin/python -m plugin.local_label_studio "$@"
