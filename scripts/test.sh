#!/usr/bin/env bash
# Set up everything (Debian packages, venv, package) and run the whole test suite.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$here/scripts/setup.sh" | tail -n 1)"
cd "$here"
"$(dirname "$PY")/ruff" check modelfs tests scripts
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
