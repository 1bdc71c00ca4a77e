/**
 * The `sharedllm` command as a user runs it: `up` on a fresh SHAREDLLM_HOME
 * serves a real model and stops cleanly; every command has --help; bad input
 * exits non-zero with a message.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { browserLinkToken, hashSecret, openDatabase } from "@sharedllm/coordinator";
import { afterEach, describe, expect, it } from "vitest";
import { tempPaths, waitFor } from "../helpers.ts";

const BIN = join(import.meta.dirname, "..", "..", "cli", "bin", "sharedllm.js");

/** The environment of a fresh machine: embedded defaults, so no DATABASE_URL. */
function userEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  delete env.DATABASE_URL;
  return env;
}

function sharedllm(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: "utf8", env: userEnv(env), timeout: 60_000 });
}

/** pids of every descendant of a process, from /proc */
function descendants(pid: number): number[] {
  const out = spawnSync("ps", ["-e", "-o", "pid=,ppid="], { encoding: "utf8" }).stdout;
  const children = new Map<number, number[]>();
  for (const line of out.trim().split("\n")) {
    const [c, p] = line.trim().split(/\s+/).map(Number) as [number, number];
    children.set(p, [...(children.get(p) ?? []), c]);
  }
  const all: number[] = [];
  const walk = (p: number) => {
    for (const c of children.get(p) ?? []) {
      all.push(c);
      walk(c);
    }
  };
  walk(pid);
  return all;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    // a zombie still answers signal 0 until it is reaped
    return !readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]?.startsWith("Z");
  } catch {
    return false;
  }
};

const running: ChildProcess[] = [];
afterEach(() => {
  for (const p of running.splice(0)) if (p.pid && p.exitCode === null) process.kill(-p.pid, "SIGKILL");
});

async function startUp(home: string) {
  const child = spawn(process.execPath, [BIN, "up", "--port", "0", "--chain-port", "0"], {
    env: userEnv({ SHAREDLLM_HOME: home }),
    stdio: ["ignore", "pipe", "pipe"],
    detached: true,
  });
  running.push(child);
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (b) => {
    stdout += b;
  });
  child.stderr?.on("data", (b) => {
    stderr += b;
  });
  const exited = new Promise<number | null>((r) => child.on("exit", (code) => r(code)));
  const up = await waitFor(
    "up.json",
    async () => {
      if (child.exitCode !== null) throw new Error(`sharedllm up exited early:\n${stderr}`);
      return JSON.parse(await readFile(join(home, "up.json"), "utf8")) as {
        coordinatorUrl: string;
        apiKey: string;
        models: string[];
        pid: number;
        chainRpcUrl?: string;
        contracts?: Record<string, string>;
      };
    },
    120_000,
    200,
  );
  return { child, up, exited, output: () => ({ stdout, stderr }) };
}

// `up` runs on its embedded defaults whatever DATABASE_URL says: the PGlite run covers this file
describe.skipIf(!!process.env.DATABASE_URL)("sharedllm up", () => {
  it("serves the default model from a fresh home, prints how to use it, and Ctrl-C stops everything", async () => {
    const { home, cleanup } = await tempPaths("sharedllm-up-");
    try {
      const { child, up, exited, output } = await startUp(home);
      expect(up.models).toEqual(["smollm2-135m-instruct"]);
      expect(up.apiKey).toMatch(/^sk-/);
      // the local dev chain runs with the contracts deployed on it
      expect(up.chainRpcUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      expect(Object.keys(up.contracts ?? {})).toEqual(expect.arrayContaining(["CreditLedger", "FederationRegistry"]));
      const code = await fetch(up.chainRpcUrl as string, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_getCode", params: [up.contracts?.CreditLedger, "latest"] }),
      }).then((r) => r.json() as Promise<{ result: string }>);
      expect(code.result.length).toBeGreaterThan(1000);
      const { stdout } = output();
      expect(stdout).toContain(`${up.coordinatorUrl}/v1`);
      expect(stdout).toContain(up.apiKey);
      expect(stdout).toContain(`curl ${up.coordinatorUrl}/v1/chat/completions`);
      // the portal is served at the printed address, with the ledger it needs
      expect(stdout).toContain(`portal:  ${up.coordinatorUrl}/`);
      // the Contribute link carries a token derived from the join token, never the join token
      const { joinToken } = JSON.parse(readFileSync(join(home, "secrets.json"), "utf8")) as { joinToken: string };
      expect(stdout).toContain(`contribute: ${up.coordinatorUrl}/contribute#token=${browserLinkToken(joinToken)}`);
      expect(stdout).not.toContain(joinToken);
      const portal = await fetch(`${up.coordinatorUrl}/`);
      expect(portal.status).toBe(200);
      expect(await portal.text()).toContain('<div id="root">');
      const ledger = (await fetch(`${up.coordinatorUrl}/v1/ledger`).then((r) => r.json())) as { ledger: string; rpcUrl: string };
      expect(ledger.ledger).toBe(up.contracts?.CreditLedger);
      expect(ledger.rpcUrl).toBe(up.chainRpcUrl);
      // the chain's history is indexed (docs/indexing.md): it reaches the contracts' deployment
      const indexed = await waitFor("the history indexer to read the dev chain", async () => {
        const s = (await fetch(`${up.coordinatorUrl}/v1/history/status`).then((r) => r.json())) as {
          indexing: boolean;
          block: string | null;
        };
        return s.indexing && s.block !== null && Number(s.block) > 0 ? s : undefined;
      });
      expect(indexed.block).not.toBeNull();

      const res = await fetch(`${up.coordinatorUrl}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${up.apiKey}`, "content-type": "application/json" },
        body: JSON.stringify({ model: up.models[0], messages: [{ role: "user", content: "Hello!" }], max_tokens: 8 }),
      });
      expect(res.status).toBe(200);
      expect(((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]?.message.content.length).toBeGreaterThan(0);

      const children = descendants(child.pid as number);
      expect(children.length).toBeGreaterThan(0);
      child.kill("SIGINT");
      expect(await exited).toBe(0);
      expect(output().stderr).toContain("stopped");
      expect(children.filter(alive)).toEqual([]);

      // the key is stored only as its hash
      const db = await openDatabase({ dataDir: join(home, "db") });
      const keys = await db.selectFrom("api_keys").selectAll().execute();
      await db.destroy();
      expect(keys.map((k) => k.key_hash)).toContain(hashSecret(up.apiKey));
      expect(JSON.stringify(keys)).not.toContain(up.apiKey);
    } finally {
      await cleanup();
    }
  }, 180_000);

  it("leaves no llama-server behind when it is killed outright", async () => {
    const { home, cleanup } = await tempPaths("sharedllm-up-");
    try {
      const { child, exited } = await startUp(home);
      const children = descendants(child.pid as number);
      expect(children.length).toBeGreaterThan(0);
      child.kill("SIGKILL");
      await exited;
      await waitFor("children to die with their parent", () => children.filter(alive).length === 0, 10_000);
    } finally {
      await cleanup();
    }
  }, 180_000);

  it("reports a port in use plainly and exits 1", async () => {
    const { home, cleanup } = await tempPaths("sharedllm-up-");
    try {
      const { up } = await startUp(home);
      const port = new URL(up.coordinatorUrl).port;
      const second = await tempPaths("sharedllm-up-");
      const r = sharedllm(["up", "--port", port], { SHAREDLLM_HOME: second.home });
      await second.cleanup();
      expect(r.status).toBe(1);
      expect(r.stderr).toContain(`port ${port} is in use`);
    } finally {
      await cleanup();
    }
  }, 180_000);
});

describe.skipIf(!!process.env.DATABASE_URL)("sharedllm commands", () => {
  it.each([
    [[]],
    [["up"]],
    [["engine"]],
    [["engine", "build"]],
    [["engine", "info"]],
    [["models"]],
    [["models", "pull"]],
    [["models", "list"]],
    [["models", "rm"]],
    [["node"]],
    [["node", "init"]],
    [["node", "start"]],
    [["node", "status"]],
    [["node", "leave"]],
    [["coordinator", "start"]],
  ])("%j --help", (args) => {
    const r = sharedllm([...args, "--help"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^Usage: sharedllm/);
  });

  it("usage errors exit 2 with a hint", () => {
    const r = sharedllm(["frobnicate"]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain("unknown command");
    const p = sharedllm(["up", "--port", "nope"]);
    expect(p.status).toBe(2);
    expect(p.stderr).toContain("expected a whole number");
    // at most 64 slots: the most a coordinator takes from a node
    const slots = sharedllm(["up", "--slots", "65"]);
    expect(slots.status).toBe(2);
    expect(slots.stderr).toContain("--slots <n>' argument '65' is invalid. expected a whole number from 1 to 64");
  });

  it("a bad model source exits 1 with what to do", () => {
    const r = sharedllm(["models", "pull", "/nonexistent/model.gguf"]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/^sharedllm: cannot read \/nonexistent\/model.gguf: no such file/);
  });

  it("a node whose model would not fit its memory cap refuses to start and says what to change", async () => {
    const { home, cleanup } = await tempPaths("sharedllm-node-");
    try {
      const r = sharedllm(
        ["node", "start", "--coordinator", "http://127.0.0.1:9", "--token", "t", "--max-memory", "0.05", "--no-owner-first"],
        {
          SHAREDLLM_HOME: home,
        },
      );
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/smollm2-135m-instruct needs about [\d.]+ GiB .* over the 0\.05 GiB cap; raise --max-memory, lower --slots/);
      const bad = sharedllm(["node", "start", "--coordinator", "not a url", "--token", "t", "--no-owner-first"], { SHAREDLLM_HOME: home });
      expect(bad.status).toBe(1);
      expect(bad.stderr).toContain("is not a coordinator URL");
      expect(sharedllm(["node", "leave"], { SHAREDLLM_HOME: home }).stderr).toContain("no node daemon is running");
    } finally {
      await cleanup();
    }
  });

  it("engine info and models list show the cached engine and default model", () => {
    const info = JSON.parse(sharedllm(["engine", "info", "--json"]).stdout) as { built: boolean; tag: string };
    expect(info.built).toBe(true);
    const list = JSON.parse(sharedllm(["models", "list", "--json"]).stdout) as { id: string }[];
    expect(list.map((m) => m.id)).toContain("smollm2-135m-instruct");
  });
});
