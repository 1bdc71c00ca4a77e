#!/usr/bin/env bash
# Runs the Python SDK's tests: a virtualenv (one per checkout, under ${TMPDIR:-/tmp}, or
# $SHAREDLLM_PY_VENV; outside the tree, where `npm run lint` would scan it), the package installed
# editable with its test extras, then pytest. The tests start the whole system
# with `node cli/bin/sharedllm.js up`, so run `npm install` at the repository root first.
# Extra arguments go to pytest (e.g. -k views).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${SHAREDLLM_PY_VENV:-${TMPDIR:-/tmp}/sharedllm-pysdk-venv-$(printf %s "$here" | sha256sum | cut -c1-12)}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

fail() {
  echo "== Python SDK tests FAILED: $1" >&2
  exit 1
}

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || fail "could not create a virtualenv with $python (needs Python 3.11+)"
fi
pip_log="$venv/pip-install.log"
# pinned (constraints.txt); installed again only when the package's requirements change
stamp="$venv/installed.sha256"
want="$(cat "$here/pyproject.toml" "$here/constraints.txt" | sha256sum | cut -c1-64)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -c "$here/constraints.txt" -e "$here[test]" >"$pip_log" 2>&1; then
    tail -n 30 "$pip_log" >&2
    fail "pip could not install sdk/python[test] (log: $pip_log)"
  fi
  echo "$want" >"$stamp"
fi
[ -d "$repo/node_modules" ] || fail "no node_modules at $repo: run npm install first"

start=$(date +%s)
cd "$here"
status=0
"$venv/bin/python" -m pytest "$@" || status=$?
took=$(($(date +%s) - start))
if [ "$status" -ne 0 ]; then
  fail "pytest exited $status after ${took}s (a start-up failure shows the tail of sharedllm up's log; SHAREDLLM_KEEP_HOME=1 keeps its home and up.log)"
fi
echo "== Python SDK tests passed in ${took}s"
