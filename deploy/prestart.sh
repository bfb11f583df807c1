#!/bin/sh
# Prestart of the API container: wait for the database (up to 60 s), apply the Alembic migrations, then exec the
# given command. Usage: deploy/prestart.sh ctphase serve --host 0.0.0.0 --port 9090 --no-migrate
set -eu
python -c 'from backend.config import get_settings; from backend.prestart import prestart; prestart(get_settings().database_url)'
exec "$@"
