import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SharedLLMError } from "@sharedllm/node";
import { runCli } from "@sharedllm/testkit";
import { describe, expect, it } from "vitest";
import { renderError } from "./errors.js";

describe("how the command reports an error", () => {
  it("prints a SharedLLMError as its message and hint, without a stack", () => {
    const err = new SharedLLMError("busy", "port 8787 is in use; pick another with --port", {
      hint: "sharedllm up --port 0 takes any free port",
    });
    expect(renderError(err)).toBe(
      "sharedllm: port 8787 is in use; pick another with --port\nhint: sharedllm up --port 0 takes any free port\n",
    );
    expect(renderError(new SharedLLMError("config", "no site known here"))).toBe("sharedllm: no site known here\n");
  });

  it("prints an unexpected error with its message first, then its stack and cause", () => {
    const cause = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:5432"), { code: "ECONNREFUSED" });
    const out = renderError(new TypeError("cannot read properties of undefined", { cause }));
    expect(out.split("\n")[0]).toBe("sharedllm: cannot read properties of undefined");
    expect(out).toContain("unexpected");
    expect(out).toMatch(/\n\s+at /);
    expect(out).toContain("ECONNREFUSED");
    expect(renderError("a string")).toContain("sharedllm: a string\n");
  });

  it("exits 1 with the message and no stack when the user can act on it", async () => {
    const home = await mkdtemp(join(tmpdir(), "sharedllm-errors-"));
    try {
      const r = await runCli(["node", "start"], { SHAREDLLM_HOME: home });
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(
        "sharedllm: no coordinator configured: pass --coordinator <url> --token <join token>, or run sharedllm node init first\n",
      );
      const scan = await runCli(["site", "scan", "10.0.0.0/8", "--token", "x"], { SHAREDLLM_HOME: home });
      expect(scan.code).toBe(1);
      expect(scan.stderr).toBe("sharedllm: 10.0.0.0/8 is too large to scan: use /16 or smaller\n");
    } finally {
      await rm(home, { recursive: true, force: true });
    }
  });

  it("exits 2 on a usage error, as commander words it", async () => {
    const r = await runCli(["up", "--port", "x"], {});
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("expected a whole number");
  });
});
