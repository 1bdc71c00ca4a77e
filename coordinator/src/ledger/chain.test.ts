import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { privateKeyToAccount } from "viem/accounts";
import { afterEach, describe, expect, it } from "vitest";
import { LedgerChain } from "./chain.js";

const account = privateKeyToAccount(`0x${"11".repeat(32)}`);
const ledger = `0x${"22".repeat(20)}` as const;

/** A JSON-RPC endpoint that knows a chain id and no contract code. */
function rpcServer(): Server {
  return createServer((req, res) => {
    let body = "";
    req.on("data", (c) => {
      body += c;
    });
    req.on("end", () => {
      const { id, method } = JSON.parse(body) as { id: number; method: string };
      const result = method === "eth_chainId" ? "0x7a69" : "0x";
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ jsonrpc: "2.0", id, result }));
    });
  });
}

describe("LedgerChain.connect", () => {
  const servers: Server[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
  });

  /** a port nothing listens on (yet) */
  async function unusedPort(): Promise<number> {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
    const { port } = s.address() as AddressInfo;
    await new Promise((r) => s.close(r));
    return port;
  }

  it("waits for a chain that is away at first, saying so, and goes on once it answers", async () => {
    const port = await unusedPort();
    const told: string[] = [];
    const connecting = LedgerChain.connect({ rpcUrl: `http://127.0.0.1:${port}`, ledger, account }, (m) => told.push(m), 20_000);
    const server = rpcServer();
    servers.push(server);
    setTimeout(() => server.listen(port, "127.0.0.1"), 1_500);
    // it got past the wait: the chain answered, and has no ledger at that address
    await expect(connecting).rejects.toThrow(`no CreditLedger contract at ${ledger} on chain 31337`);
    expect(told.length).toBeGreaterThan(0);
    expect(told[0]).toMatch(new RegExp(`^the chain at http://127\\.0\\.0\\.1:${port} does not answer: .*; trying again for up to \\d+ s$`));
  });

  it("does not wait for an endpoint that answers, but not as a chain (a wrong path, a refused key)", async () => {
    const server = createServer((_, res) => {
      res.statusCode = 401;
      res.end("unauthorized");
    });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const { port } = server.address() as AddressInfo;
    const told: string[] = [];
    const started = Date.now();
    await expect(
      LedgerChain.connect({ rpcUrl: `http://127.0.0.1:${port}/v3/SECRET`, ledger, account }, (m) => told.push(m), 20_000),
    ).rejects.toThrow(new RegExp(`^the chain at http://127\\.0\\.0\\.1:${port} does not answer: (?!.*SECRET)`));
    expect(told).toEqual([]);
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it("gives up on a chain that does not answer within the wait", async () => {
    const port = await unusedPort();
    const started = Date.now();
    await expect(LedgerChain.connect({ rpcUrl: `http://127.0.0.1:${port}`, ledger, account }, () => {}, 2_000)).rejects.toThrow(
      `the chain at http://127.0.0.1:${port} does not answer`,
    );
    expect(Date.now() - started).toBeGreaterThanOrEqual(1_000);
  });
});
