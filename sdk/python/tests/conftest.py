"""The whole system as a user runs it, once per test session: `sharedllm up` (dev chain with the
contracts, a coordinator with credits and federation on, a node on the default model) in a
temporary SHAREDLLM_HOME, on loopback and free ports. Ready when up.json names the coordinator
and its /healthz lists a model; stopped by SIGTERM to its process group (SIGKILL after 30 s).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = REPO / "cli" / "bin" / "sharedllm.js"
#: a first start may build the engine and fetch the default model into the shared cache
START_TIMEOUT_S = float(os.environ.get("SHAREDLLM_UP_TIMEOUT", "600"))
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class System:
    url: str
    model: str
    chain_rpc_url: str
    home: Path


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Asks `up` to stop everything (it owns the chain, node and engine), then kills what is left."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    finally:
        # the group may hold children that outlived `up` (a crash): none may outlive the tests
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture(scope="session")
def system() -> Iterator[System]:
    home = Path(tempfile.mkdtemp(prefix="sharedllm-pysdk-"))
    log = home / "up.log"
    env = {**os.environ, "SHAREDLLM_HOME": str(home)}
    # a fresh machine's embedded defaults: PGlite, not CI's PostgreSQL
    env.pop("DATABASE_URL", None)
    args = [os.environ.get("NODE", "node"), str(BIN), "up", "--host", "127.0.0.1", "--port", "0", "--chain-port", "0", "--federation"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        up_file = home / "up.json"
        ready: System | None = None
        while ready is None:
            if proc.poll() is not None:
                pytest.fail(f"sharedllm up exited with {proc.returncode} while starting; its log ends:\n{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"sharedllm up was not ready within {START_TIMEOUT_S:.0f} s; its log ends:\n{_tail(log)}")
            if up_file.exists():
                try:
                    up = json.loads(up_file.read_text())
                    health = httpx.get(f"{up['coordinatorUrl']}/healthz", timeout=5).json()
                except (ValueError, KeyError, httpx.HTTPError):
                    health = None  # up.json half written, or the server not answering yet
                if health and health.get("status") == "ok" and health.get("models"):
                    ready = System(url=up["coordinatorUrl"], model=health["models"][0], chain_rpc_url=up["chainRpcUrl"], home=home)
            if ready is None:
                time.sleep(0.2)
        yield ready
    finally:
        _stop(proc)
        if os.environ.get("SHAREDLLM_KEEP_HOME"):
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
