#!/usr/bin/env bash
# Fuzzes the coordinator from its own OpenAPI spec with schemathesis (issue 18 item 6): starts
# `sharedllm up` (dev chain, coordinator with ledger, a node on the default model) in a temporary
# SHAREDLLM_HOME on loopback and free ports, waits until /healthz lists a model, runs
# `schemathesis run <url>/openapi.json` with the dev API key as bearer auth, and always kills
# up's process group at the end. Exits non-zero on any finding.
#
# Bounded: a per-request timeout (a hang is a finding), a max examples count per operation, a
# time budget for the run and a hard wall-clock limit around it. The default is CI-sized
# (about 100 s of fuzzing); FUZZ_LONG=1 runs longer. FUZZ_SEED=<n> replays a run's data.
#
# The virtualenv lives outside the tree (biome lints the tree): ${TMPDIR:-/tmp}, or
# $SHAREDLLM_FUZZ_VENV; schemathesis and its dependencies are pinned in fuzz/requirements.txt and
# installed again only when that file changes. Run `npm install` at the repository root first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${SHAREDLLM_FUZZ_VENV:-${TMPDIR:-/tmp}/sharedllm-fuzz-venv-$(printf %s "$here" | sha256sum | cut -c1-12)}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ -n "${FUZZ_LONG:-}" ]; then
  max_examples=200 max_time=900 hard_limit=1200
else
  max_examples=15 max_time=100 hard_limit=180
fi
request_timeout=30
start_timeout="${SHAREDLLM_UP_TIMEOUT:-600}"

fail() {
  echo "== fuzz FAILED: $1" >&2
  exit 1
}

[ -d "$repo/node_modules" ] || fail "no node_modules at $repo: run npm install first"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv" || fail "could not create a virtualenv with $python (needs Python 3.10+)"
fi
stamp="$venv/installed.sha256"
want="$(sha256sum <"$here/requirements.txt" | cut -c1-64)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check -r "$here/requirements.txt" >"$venv/pip-install.log" 2>&1; then
    tail -n 30 "$venv/pip-install.log" >&2
    fail "pip could not install fuzz/requirements.txt (log: $venv/pip-install.log)"
  fi
  echo "$want" >"$stamp"
fi

home="$(mktemp -d "${TMPDIR:-/tmp}/sharedllm-fuzz-XXXXXX")"
log="$home/up.log"
up_pid=""
status=1
# asks up to stop everything it owns (chain, node, engine), then kills what is left of its group
cleanup() {
  if [ -n "$up_pid" ] && kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM -- "-$up_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
      kill -0 "$up_pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  [ -n "$up_pid" ] && kill -KILL -- "-$up_pid" 2>/dev/null || true
  if [ "$status" -eq 0 ] && [ -z "${SHAREDLLM_KEEP_HOME:-}" ]; then
    rm -rf "$home"
  else
    echo "== kept $home (up.log, schemathesis reports under report/)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# its own process group (setsid), so that the group can be killed whatever up leaves behind;
# a fresh machine's embedded defaults: PGlite, not CI's PostgreSQL
env -u DATABASE_URL SHAREDLLM_HOME="$home" setsid node "$repo/cli/bin/sharedllm.js" up \
  --host 127.0.0.1 --port 0 --chain-port 0 </dev/null >"$log" 2>&1 &
up_pid=$!

deadline=$(($(date +%s) + ${start_timeout%.*}))
url="" key=""
while :; do
  kill -0 "$up_pid" 2>/dev/null || { tail -n 40 "$log" >&2; fail "sharedllm up exited while starting; its log ends above"; }
  [ "$(date +%s)" -lt "$deadline" ] || { tail -n 40 "$log" >&2; fail "sharedllm up was not ready within ${start_timeout}s"; }
  if [ -f "$home/up.json" ]; then
    # up.json may be half written, the server not answering yet: try again
    if ready="$("$venv/bin/python" - "$home/up.json" <<'PY' 2>/dev/null
import json, sys, urllib.request
up = json.load(open(sys.argv[1]))
health = json.load(urllib.request.urlopen(up["coordinatorUrl"] + "/healthz", timeout=5))
assert health.get("status") == "ok" and health.get("models")
print(up["coordinatorUrl"], up["apiKey"])
PY
)"; then
      read -r url key <<<"$ready"
      break
    fi
  fi
  sleep 0.2
done
echo "== sharedllm up ready at $url (home $home)"

# Checks: all, less two that are unsound for this API (fuzz/README.md says why):
#  unsupported_method: fastify answers an unrouted method 404 not_found, not 405;
#  positive_data_acceptance: registration and sign-in bodies are valid only with real
#    signatures and nonces, which no schema can generate.
# --output-sanitize false: the reproductions show the real bodies (max_tokens) and the dev
# key, which is a throwaway of this temporary home.
args=(
  run "$url/openapi.json"
  --header "Authorization: Bearer $key"
  --checks all --exclude-checks unsupported_method,positive_data_acceptance
  --request-timeout "$request_timeout"
  --max-examples "$max_examples"
  --max-time "$max_time"
  --workers 2
  --output-sanitize false
  --no-color
  --report junit,ndjson --report-dir "$home/report"
)
[ -n "${FUZZ_SEED:-}" ] && args+=(--seed "$FUZZ_SEED")
echo "== schemathesis ${args[*]/$key/<dev key>} (hard limit ${hard_limit}s)"
rc=0
# from the temporary home: schemathesis keeps a .schemathesis/ cache in its working directory
cd "$home"
SCHEMATHESIS_HOOKS="$here/hooks.py" timeout --kill-after=10 "$hard_limit" "$venv/bin/schemathesis" "${args[@]}" || rc=$?
status=$rc
case "$status" in
  0) echo "== fuzz passed: no findings" ;;
  124 | 137) echo "== fuzz FAILED: schemathesis ran past its hard limit of ${hard_limit}s" >&2 ;;
  *) echo "== fuzz FAILED: schemathesis exited $status (findings above)" >&2 ;;
esac
exit "$status"
