/**
 * Forwarded jobs with real parts: one dev chain (CreditLedger and FederationRegistry), two
 * coordinators A and B with credits and federation, each with a real node (the testkit's
 * `startFederatedSites`). A's node serves the default model; B's node serves the same file under a
 * second name only B has, so A's users can have it only through B. A's coordinator has credits in
 * escrow at B: it is B's customer. PGlite by default, PostgreSQL when DATABASE_URL is set.
 */
import { randomUUID } from "node:crypto";
import { type Coordinator, createApiKey } from "@sharedllm/coordinator";
import { DEFAULT_MODEL, loadNodeIdentity } from "@sharedllm/node";
import { FEDERATION_PREFIX, type FederationResponse, type OpenAIErrorBody } from "@sharedllm/protocol";
import { sql } from "kysely";
import type { Address } from "viem";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { devWallet, type TestChain } from "../chain.ts";
import { type FederatedSites, PEER_MODEL, type Site, startFederatedSites } from "../federation.ts";
import { journalSum, waitFor } from "../helpers.ts";

let sites: FederatedSites;
let chain: TestChain;
let a: Site;
let b: Site;

/** The sum of one kind of journal entry for an address at a site. */
const journal = (s: Site, address: string, kind: "charge" | "earn" | "hold" | "release") => journalSum(s.coordinator.db, address, kind);

/** A job's status in a site's jobs table. */
const jobStatus = async (s: Site, id: string) =>
  (await s.coordinator.db.selectFrom("jobs").select(["status"]).where("id", "=", id).executeTakeFirst())?.status;

function chat(s: Site, key: string, body: Record<string, unknown>, signal?: AbortSignal) {
  return fetch(`${s.coordinator.url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${key}` },
    body: JSON.stringify({ messages: [{ role: "user", content: "Name three colours." }], temperature: 0, ...body }),
    signal,
  });
}

/** The text of an SSE chat stream. */
async function streamedText(res: Response): Promise<string> {
  const raw = await res.text();
  let text = "";
  for (const line of raw.split("\n")) {
    if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
    const e = JSON.parse(line.slice(6)) as { choices?: { delta?: { content?: string } }[]; error?: unknown };
    if (e.error) throw new Error(`the stream failed: ${JSON.stringify(e.error)}`);
    text += e.choices?.[0]?.delta?.content ?? "";
  }
  return text;
}

const forwardedRows = (s: Site) => s.coordinator.db.selectFrom("federated_jobs").selectAll().execute();

/** A long story streamed through A from B, once its first chunk has arrived, and a reader of the rest. */
async function longStreamThroughA(topic: string) {
  const res = await chat(a, userKey, {
    model: PEER_MODEL,
    max_tokens: 800,
    stream: true,
    messages: [{ role: "user", content: `Write a very long story about ${topic}.` }],
  });
  expect(res.status).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  await reader.read();
  return {
    /** the rest of the stream, as text, once it ends */
    async rest(): Promise<string> {
      let text = "";
      const dec = new TextDecoder();
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return text;
        text += dec.decode(value);
      }
    },
  };
}

const user = devWallet(7);
const soleUser = devWallet(8);
let userKey: string;
let siteOnlyKey: string;
let directKeyB: string;

beforeAll(async () => {
  // a job whose unit failed mid-stream waits 1 s for another to continue it
  sites = await startFederatedSites({ capacityPollMs: 300, continueWaitMs: 1_000 });
  ({ chain, a, b } = sites);
  await chain.deposit(user, 1_000_000n, a.address);
  await chain.deposit(soleUser, 1_000_000n, a.address);
  // the user pays B too, when they ask B directly
  await chain.deposit(user, 1_000_000n, b.address);
  userKey = (await createApiKey(a.coordinator.db, "user", user.address)).secret;
  siteOnlyKey = (await createApiKey(a.coordinator.db, "site only", soleUser.address, "site_only")).secret;
  directKeyB = (await createApiKey(b.coordinator.db, "direct", user.address)).secret;
}, 240_000);

afterAll(() => sites?.stop());

describe("forwarding jobs to a trusted peer site", () => {
  it("A's user gets B's model through A: B's answer, charged at A, B charges A and pays its node, both log one txid, both settle on chain to the unit", async () => {
    const body = { model: PEER_MODEL, max_tokens: 24, stream: true };
    const direct = await chat(b, directKeyB, body);
    expect(direct.status).toBe(200);
    const expected = await streamedText(direct);
    expect(expected.length).toBeGreaterThan(0);
    const nodeB = b.node.nodeId;
    const earnedDirect = await waitFor("B's node's receipt for the direct job", async () => {
      const earned = await journal(b, nodeB, "earn");
      return earned > 0n ? earned : undefined;
    });

    const res = await chat(a, userKey, body);
    expect(res.status).toBe(200);
    expect(res.headers.get("x-sharedllm-node")).toBe(`peer:${b.address}`);
    expect(await streamedText(res)).toBe(expected);

    const out = await waitFor("A's row of the forwarded job", async () =>
      (await forwardedRows(a)).find((r) => r.direction === "out" && r.status === "completed"),
    );
    const inB = await waitFor("B's row of it", async () =>
      (await forwardedRows(b)).find((r) => r.txid === out.txid && r.status === "completed"),
    );
    expect({ out: [out.peer, out.model], in: [inB.direction, inB.peer, inB.model] }).toEqual({
      out: [b.address, PEER_MODEL],
      in: ["in", a.address, PEER_MODEL],
    });
    expect(inB.completion_tokens).toBe(out.completion_tokens);
    // the user pays A at A's price; A pays B at B's (the same default pricing here): to the unit
    const paidAtA = await journal(a, user.address, "charge");
    expect(paidAtA).toBeGreaterThan(0n);
    expect(await journal(b, a.address, "charge")).toBe(paidAtA);
    // B's node earns as for any job here; no node at A was paid for it
    await waitFor("B's node's receipt", async () => (await journal(b, nodeB, "earn")) > earnedDirect, 20_000);
    expect((await journal(b, nodeB, "earn")) - earnedDirect).toBeLessThanOrEqual(paidAtA);
    expect(await journal(a, a.node.nodeId, "earn")).toBe(0n);
    // A earns what its user paid for the forwarded job: what refills its escrow at B
    expect(await journal(a, a.address, "earn")).toBe(paidAtA);

    // B signed a receipt for what it charged A; A checked it against what it relayed and kept it
    const receiptAtA = async () =>
      (await forwardedRows(a)).find((r) => r.direction === "out" && r.txid === out.txid && r.receipt_status !== null);
    await waitFor("A to keep B's receipt", receiptAtA, 10_000);
    expect(await receiptAtA()).toMatchObject({ receipt_status: "accepted", receipt_credits: paidAtA.toString() });

    // settled on chain, both sites. B settles first: its own user's spend settles, while A's spend
    // at B waits for A to accept owing it (a batch taking it now would be refused by the ledger)
    const earnedByNodeB = await journal(b, nodeB, "earn");
    const paidAtB = await journal(b, user.address, "charge");
    expect(paidAtB).toBeGreaterThan(0n);
    await b.coordinator.ledger?.settler.tick(true);
    expect((await chain.escrow(user.address, b.address)).spent).toBe(paidAtB);
    expect((await chain.escrow(a.address, b.address)).spent).toBe(0n);
    // A posts what it accepts owing B, then B settles A's escrow up to it
    await a.coordinator.ledger?.settler.tick(true);
    expect(await chain.accepted(a.address, b.address)).toBe(paidAtA);
    await b.coordinator.ledger?.settler.tick(true);
    expect((await chain.escrow(user.address, a.address)).spent).toBe(paidAtA);
    expect((await chain.escrow(a.address, b.address)).spent).toBe(paidAtA);
    expect((await chain.settlement(a.address)).totalEarnings).toBe(paidAtA);
    expect((await chain.settlement(b.address)).totalEarnings).toBe(earnedByNodeB);
    expect((await a.coordinator.ledger?.settler.settledEarnings(a.address))?.cumulative).toBe(paidAtA);
    expect((await b.coordinator.ledger?.settler.settledEarnings(nodeB as Address))?.cumulative).toBe(earnedByNodeB);

    const view = (await (await fetch(`${a.coordinator.url}/v1/federation`)).json()) as FederationResponse;
    const peerB = view.peers.find((p) => p.address === b.address);
    expect(peerB?.capacity?.models.map((m) => m.id)).toContain(PEER_MODEL);
    expect(peerB?.capacity?.models.find((m) => m.id === PEER_MODEL)?.pricePer1k).toEqual({ prompt: "1000", completion: "2000" });
    // the first job between them: one each way in the logs, and what each owes the other by the receipts
    expect(peerB).toMatchObject({ forwarded: { out: 1, in: 0 }, credits: { out: paidAtA.toString(), in: "0" } });
    const viewB = (await (await fetch(`${b.coordinator.url}/v1/federation`)).json()) as FederationResponse;
    expect(viewB.peers.find((p) => p.address === a.address)).toMatchObject({
      forwarded: { out: 0, in: 1 },
      credits: { out: "0", in: paidAtA.toString() },
    });
    const listed = async (key: string) =>
      (
        (await (await fetch(`${a.coordinator.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })).json()) as {
          data: { id: string }[];
        }
      ).data.map((m) => m.id);
    expect(await listed(userKey)).toEqual(expect.arrayContaining([DEFAULT_MODEL.id, PEER_MODEL]));
    expect(await listed(siteOnlyKey)).not.toContain(PEER_MODEL);
    const metrics = await (await fetch(`${a.coordinator.url}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`sharedllm_federated_jobs_total\\{peer="${b.address}",direction="out",status="completed"\\} [1-9]`));
    expect(metrics).toContain(`sharedllm_federation_credits{peer="${b.address}",direction="out"} ${paidAtA}`);
  });

  it("a site_only key is never forwarded: 503, nothing charged", async () => {
    const res = await chat(a, siteOnlyKey, { model: PEER_MODEL, max_tokens: 8 });
    expect(res.status).toBe(503);
    expect(((await res.json()) as OpenAIErrorBody).error).toMatchObject({
      code: "no_capacity",
      message: expect.stringMatching(/site_only/),
    });
    expect(await journal(a, soleUser.address, "hold")).toBe(0n);
    expect(await journal(a, soleUser.address, "charge")).toBe(0n);
    expect(await (await fetch(`${a.coordinator.url}/metrics`)).text()).toMatch(
      /sharedllm_federation_refusals_total\{reason="site_only"\} 1/,
    );
  });

  it("an own_nodes key runs only on its owner's nodes, and never on a peer site", async () => {
    const own = (await createApiKey(a.coordinator.db, "own", soleUser.address, "own_nodes")).secret;
    const elsewhere = await chat(a, own, { model: DEFAULT_MODEL.id, max_tokens: 4 });
    expect(elsewhere.status).toBe(503);
    expect((await chat(a, own, { model: PEER_MODEL, max_tokens: 4 })).status).toBe(503);
    expect(await journal(a, soleUser.address, "charge")).toBe(0n);
    // the node's owner: its own wallet pays for jobs on its own node
    const identity = await loadNodeIdentity(a.nodeHome, { create: false });
    if (!identity) throw new Error("A's node has no identity");
    await chain.fund(identity.account.address);
    await chain.deposit(identity.account, 100_000n, a.address);
    const mine = (await createApiKey(a.coordinator.db, "mine", identity.account.address, "own_nodes")).secret;
    const res = await chat(a, mine, { model: DEFAULT_MODEL.id, max_tokens: 4 });
    expect(res.status).toBe(200);
    expect(res.headers.get("x-sharedllm-node")).toBe(a.node.nodeId);
  });

  it("with inbound off at B, A answers 503 and charges nothing; B refuses a signed job outright", async () => {
    b.coordinator.forwarding.inbound = false;
    try {
      await waitFor("A to read that B takes no jobs", () => a.coordinator.peers?.get(b.address)?.capacity?.inbound === false, 5_000);
      const before = await journal(a, user.address, "charge");
      const res = await chat(a, userKey, { model: PEER_MODEL, max_tokens: 8 });
      expect(res.status).toBe(503);
      expect(await journal(a, user.address, "charge")).toBe(before);
      const direct = await (a.coordinator.federation as NonNullable<Coordinator["federation"]>).signedFetch(
        b.address,
        "POST",
        `${FEDERATION_PREFIX}/jobs`,
        {
          txid: randomUUID(),
          kind: "chat",
          body: { model: PEER_MODEL, messages: [{ role: "user", content: "hi" }] },
          generationLimit: 4,
        },
      );
      expect(direct.status).toBe(503);
      expect(((await direct.json()) as OpenAIErrorBody).error.code).toBe("federation_inbound_off");
    } finally {
      b.coordinator.forwarding.inbound = true;
    }
    await waitFor("A to read that B takes jobs again", () => a.coordinator.peers?.get(b.address)?.capacity?.inbound === true, 5_000);
  });

  it("B caps A's jobs running there (429), and a repeated txid returns the first result without running again", async () => {
    const f = a.coordinator.federation;
    if (!f) throw new Error("A runs without federation");
    const job = (txid: string, generationLimit = 8, signal?: AbortSignal) =>
      f.signedFetch(
        b.address,
        "POST",
        `${FEDERATION_PREFIX}/jobs`,
        {
          txid,
          kind: "chat",
          body: { model: PEER_MODEL, messages: [{ role: "user", content: "Count to fifty." }], temperature: 0 },
          generationLimit,
        },
        { signal },
      );
    b.coordinator.forwarding.inboundCapPerPeer = 1;
    const long = new AbortController();
    try {
      const first = await job(randomUUID(), 400, long.signal);
      expect(first.status).toBe(200);
      const second = await job(randomUUID());
      expect(second.status).toBe(429);
      expect(((await second.json()) as OpenAIErrorBody).error.code).toBe("federation_peer_over_cap");
    } finally {
      long.abort();
      b.coordinator.forwarding.inboundCapPerPeer = undefined;
    }

    const jobsOfA = async () =>
      Number(
        (
          await b.coordinator.db
            .selectFrom("jobs")
            .select(sql<string>`count(*)`.as("n"))
            .where("api_key_id", "=", `key_peer_${a.address}`)
            .executeTakeFirstOrThrow()
        ).n,
      );
    await waitFor("the capped job's end at B", async () => !(await forwardedRows(b)).some((r) => r.status === "running"));
    const txid = randomUUID();
    const once = await job(txid);
    expect(once.status).toBe(200);
    const text = await once.text();
    expect(text).toMatch(/"end":/);
    const ran = await jobsOfA();
    const again = await job(txid);
    expect(again.status).toBe(200);
    expect(await again.text()).toBe(text);
    expect(await jobsOfA()).toBe(ran);

    // the very same signed request again (its nonce used): refused as a replay, nothing run; a fresh
    // signature of a new transaction still runs
    const url = `${b.coordinator.url}${FEDERATION_PREFIX}/jobs`;
    const body = JSON.stringify({
      txid: randomUUID(),
      kind: "chat",
      body: { model: PEER_MODEL, messages: [{ role: "user", content: "Say hi." }], temperature: 0 },
      generationLimit: 4,
    });
    const headers = { ...f.sign(b.address, "POST", url, body), "content-type": "application/json" };
    const original = await fetch(url, { method: "POST", headers, body });
    expect(original.status).toBe(200);
    await original.text();
    const before = await jobsOfA();
    const replayed = await fetch(url, { method: "POST", headers, body });
    expect(replayed.status).toBe(401);
    expect(((await replayed.json()) as OpenAIErrorBody).error.code).toBe("federation_replayed");
    expect(await jobsOfA()).toBe(before);
    const fresh = await job(randomUUID());
    expect(fresh.status).toBe(200);
    // read to its end: a job left running would be charged during the next test
    expect(await fresh.text()).toMatch(/"end":/);
  });

  it("a client that goes away at A cancels the job at B; both charge for the output streamed and the prompt, and B's receipt for it reaches A", async () => {
    const [paidAtA, chargedAtB] = await Promise.all([journal(a, user.address, "charge"), journal(b, a.address, "charge")]);
    const gone = new AbortController();
    const res = await chat(
      a,
      userKey,
      { model: PEER_MODEL, max_tokens: 600, stream: true, messages: [{ role: "user", content: "Write a long story." }] },
      gone.signal,
    );
    expect(res.status).toBe(200);
    const reader = (res.body as ReadableStream<Uint8Array>).getReader();
    let text = "";
    while ((text.match(/"content":"/g) ?? []).length < 5) text += Buffer.from((await reader.read()).value as Uint8Array).toString();
    gone.abort();
    // A tells B, reads B's answer on to its end line, and keeps B's receipt for what B streamed
    const out = await waitFor("A's row of the cancelled job, with B's receipt", async () =>
      (await forwardedRows(a)).find((r) => r.direction === "out" && r.status === "cancelled" && r.receipt_status !== null),
    );
    const inB = await waitFor("B to cancel it", async () =>
      (await forwardedRows(b)).find((r) => r.txid === out.txid && r.status !== "running"),
    );
    expect(inB.status).toBe("cancelled");
    await waitFor("B's job row to say cancelled", async () => (await jobStatus(b, inB.job_id)) === "cancelled");
    expect(inB.completion_tokens).toBeGreaterThanOrEqual(5);
    expect(inB.completion_tokens).toBeLessThan(600);
    // the prompt B's node took, which B told A as output began: both charge it
    expect(inB.prompt_tokens).toBeGreaterThan(10);
    expect(out).toMatchObject({
      receipt_status: "accepted",
      receipt_credits: inB.receipt_credits,
      completion_tokens: inB.completion_tokens,
      prompt_tokens: inB.prompt_tokens,
    });
    const atA = await a.coordinator.db.selectFrom("jobs").selectAll().where("id", "=", out.job_id).executeTakeFirstOrThrow();
    expect(atA).toMatchObject({ status: "cancelled", prompt_tokens: inB.prompt_tokens });
    // B charged A what its receipt says; A charged its user for what A sent, which A counts too
    const owed = BigInt(inB.receipt_credits ?? 0);
    expect(owed).toBeGreaterThan(0n);
    expect((await journal(b, a.address, "charge")) - chargedAtB).toBe(owed);
    const userPaid = (await journal(a, user.address, "charge")) - paidAtA;
    expect(userPaid).toBeGreaterThan(0n);
    expect(userPaid).toBeLessThanOrEqual(owed);
  });

  it("a peer cut off mid-stream fails its jobs there: no unit here can continue, the client's stream ends with an error, B's job is cancelled", async () => {
    const stream = await longStreamThroughA("the sea");
    // A stops endorsing B: A no longer trusts B at its next registry read (1 s here)
    await sites.fed(a, "unendorse", b.address);
    const rest = await stream.rest();
    expect(rest).toMatch(/"code":"node_failed"/);
    expect(rest).not.toMatch(/\[DONE\]/);
    const out = await waitFor("A's row of the failed job", async () =>
      (await forwardedRows(a)).find((r) => r.direction === "out" && r.status === "failed"),
    );
    expect(out.error).toMatch(/cut off/);
    const inB = await waitFor("B's end of it", async () =>
      (await forwardedRows(b)).find((r) => r.txid === out.txid && r.status !== "running"),
    );
    expect(inB.status).toBe("cancelled");
  });

  it("a site cut off by the peer serving its job has that job cancelled there at once, not run to its end", async () => {
    // A trusts B again (the test before unendorsed it)
    await sites.fed(a, "endorse", b.address);
    await waitFor("A to forward to B again", () => a.coordinator.peers?.serves(PEER_MODEL), 20_000);
    const stream = await longStreamThroughA("the mountains");
    // governance revokes A: B cuts A off at its next registry read (1 s here), and stops A's job there
    await sites.fed(a, "revoke", a.address);
    const rest = await stream.rest();
    expect(rest).not.toMatch(/\[DONE\]/);
    const inB = await waitFor("B's end of A's job", async () =>
      (await forwardedRows(b)).find((r) => r.direction === "in" && r.status !== "running" && r.error?.includes("cut off")),
    );
    expect(inB.status).toBe("cancelled");
    await waitFor("B's job row to say cancelled", async () => (await jobStatus(b, inB.job_id)) === "cancelled");
  });
});
