#!/usr/bin/env bash
# Install and start a local, headless Label Studio 1.23.2 in its own virtual environment (development, demo, e2e
# tests). Label Studio's Django stack pins its own label-studio-sdk and friends, so it never shares ctphase's .venv.
#
#   scripts/label_studio.sh install           # create the venv (about 1 minute and 1 GB the first time), idempotent
#   scripts/label_studio.sh start [options]   # install if needed, then run the server in the foreground
#
# start options (all optional):
#   --port N            listen port (default 8089, bound to 127.0.0.1 unless --host is given)
#   --host ADDR         listen address (default 127.0.0.1)
#   --data-dir DIR      LABEL_STUDIO_BASE_DATA_DIR (default .cache/label-studio-data); its first start runs the
#                       migrations (30-40 s) and creates the user and organisation
#   --files-root DIR    LOCAL_FILES_DOCUMENT_ROOT: enables local file serving (ctphase previews live below it)
#   --user EMAIL --password PASS --token HEX40
#                       the first user and its legacy API token (used only when the data dir is new);
#                       defaults: admin@example.com / a random password and token printed on first start
#
# Environment: CTPHASE_LS_VENV (default .cache/label-studio-venv), CTPHASE_LS_VERSION (default 1.23.2), PYTHON.
# ML_BLOCK_LOCAL_IP and SSRF_PROTECTION_ENABLED are both turned off so Label Studio may call an ML backend on a
# private address (see deploy/README.md for what that means in production).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CTPHASE_LS_VENV:-$ROOT/.cache/label-studio-venv}"
VERSION="${CTPHASE_LS_VERSION:-1.23.2}"
PYTHON="${PYTHON:-python3}"

install_label_studio() {
    if [[ -x "$VENV/bin/label-studio" ]] && "$VENV/bin/python" -c "
import importlib.metadata as m, sys
sys.exit(m.version('label-studio') != '$VERSION')" 2>/dev/null; then
        return 0
    fi
    echo "installing label-studio==$VERSION into $VENV (about a minute)" >&2
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$VERSION" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

start_label_studio() {
    local port=8089 host=127.0.0.1 data_dir="$ROOT/.cache/label-studio-data" files_root="" user="admin@example.com"
    local password="" token=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --port) port="$2"; shift 2 ;;
            --host) host="$2"; shift 2 ;;
            --data-dir) data_dir="$2"; shift 2 ;;
            --files-root) files_root="$2"; shift 2 ;;
            --user) user="$2"; shift 2 ;;
            --password) password="$2"; shift 2 ;;
            --token) token="$2"; shift 2 ;;
            *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
        esac
    done
    install_label_studio
    mkdir -p "$data_dir"
    # Label Studio creates the user only when both USERNAME and PASSWORD are set (an existing user is kept as is);
    # with a username but no password it would prompt, so an existing data dir gets no user variables at all.
    local user_env=()
    if [[ ! -f "$data_dir/label_studio.sqlite3" ]]; then
        if [[ -z "$password" ]]; then password="$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(12))')"; fi
        if [[ -z "$token" ]]; then token="$("$PYTHON" -c 'import secrets; print(secrets.token_hex(20))')"; fi
        echo "new Label Studio data dir $data_dir: user $user, password $password, API token $token" >&2
    fi
    if [[ -n "$password" ]]; then
        user_env=(LABEL_STUDIO_USERNAME="$user" LABEL_STUDIO_PASSWORD="$password")
        if [[ -n "$token" ]]; then user_env+=(LABEL_STUDIO_USER_TOKEN="$token"); fi
    fi
    local files_env=(LOCAL_FILES_SERVING_ENABLED=false)
    if [[ -n "$files_root" ]]; then
        mkdir -p "$files_root"
        files_env=(LOCAL_FILES_SERVING_ENABLED=true "LOCAL_FILES_DOCUMENT_ROOT=$(cd "$files_root" && pwd)")
    fi
    exec env "${files_env[@]}" "${user_env[@]}" \
        LABEL_STUDIO_BASE_DATA_DIR="$data_dir" \
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
        LABEL_STUDIO_HOST="http://$host:$port" \
        ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false \
        COLLECT_ANALYTICS=false LATEST_VERSION_CHECK=false SENTRY_DSN= FRONTEND_SENTRY_DSN= \
        "$VENV/bin/label-studio" start --no-browser --internal-host "$host" --port "$port"
}

case "${1:-}" in
    install) install_label_studio; echo "$VENV/bin/label-studio" ;;
    start) shift; start_label_studio "$@" ;;
    *) echo "usage: $0 install | start [--port N] [--data-dir DIR] [--files-root DIR] [--user E --password P --token T]" >&2; exit 2 ;;
esac
