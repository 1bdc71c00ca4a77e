import pino from "pino";
import { generatePrivateKey } from "viem/accounts";
import { describe, expect, it } from "vitest";
import type { Db } from "../db/database.js";
import { chainErrorText, redactRpcUrl } from "../ledger/chain.js";
import { Federation } from "./federation.js";

describe("the RPC URL in messages", () => {
  it("keeps only its scheme and host: its path, query or user part may hold an API key", () => {
    expect(redactRpcUrl("https://user:pw@rpc.example:8545/v3/SECRETKEY?apikey=SECRET2")).toBe("https://rpc.example:8545");
    expect(redactRpcUrl("not a url SECRET")).toBe("the configured RPC URL");
    const url = "https://rpc.example/v3/SECRETKEY";
    expect(chainErrorText(new Error(`HTTP request failed. URL: ${url} Details: x`), url)).toBe(
      "HTTP request failed. URL: https://rpc.example Details: x",
    );
  });

  it("a chain that does not answer is reported without the key in its URL", async () => {
    const rpcUrl = "http://127.0.0.1:1/v3/SECRETKEY";
    const err = await Federation.start(
      undefined as unknown as Db,
      { rpcUrl, registry: "0x0000000000000000000000000000000000000001", privateKey: generatePrivateKey() },
      pino({ level: "silent" }),
    ).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/the chain at http:\/\/127\.0\.0\.1:1 does not answer/);
    expect((err as Error).message).not.toMatch(/SECRETKEY/);
  });
});
