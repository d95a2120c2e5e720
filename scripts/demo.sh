#!/usr/bin/env bash
# Set up everything (Debian packages, venv, package) and run the demo: a real model's lineage,
# built by CPU training, imported into a store, mounted, and used through the mount.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$here/scripts/setup.sh" | tail -n 1)"
cd "$here"
exec "$PY" scripts/demo.py "$@"
