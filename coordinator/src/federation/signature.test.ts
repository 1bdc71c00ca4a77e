import type { Address, Hex } from "viem";
import { generatePrivateKey, privateKeyToAccount } from "viem/accounts";
import { describe, expect, it } from "vitest";
import { pairKey } from "./pairKey.js";
import {
  FEDERATION_HEADERS,
  type InboundRequest,
  MAX_VALIDITY_S,
  type PeerLookup,
  type RequestParts,
  signRequest,
  verifyHeaders,
  verifyRequest,
} from "./signature.js";
import { type RegistryEntry, trustOf } from "./trust.js";

function coordinator(keyId = 1) {
  const privateKey = generatePrivateKey();
  const account = privateKeyToAccount(privateKey);
  return {
    privateKey,
    address: account.address.toLowerCase() as Address,
    publicKey: `0x${account.publicKey.slice(4)}` as Hex,
    keyId,
  };
}
type Coord = ReturnType<typeof coordinator>;

const key = (own: Coord, peer: Coord) => pairKey(own.privateKey, own, peer.publicKey, peer);

const NOW = Date.UTC(2026, 10, 30, 12, 0, 0);
const a = coordinator(1);
const b = coordinator(4);
const c = coordinator(2);

function entry(x: Coord, o: Partial<RegistryEntry> = {}): RegistryEntry {
  return {
    address: x.address,
    publicKey: x.publicKey,
    url: "http://127.0.0.1:1",
    metadata: "{}",
    status: "admitted",
    keyId: x.keyId,
    validUntil: NOW / 1000 + 3600,
    registeredAt: 0,
    endorsed: false,
    ...o,
  };
}

/** B's view of its peers, as Federation builds it from the registry. */
function lookupAt(receiver: Coord, entries: RegistryEntry[]) {
  return (origin: Address): PeerLookup => {
    const e = entries.find((x) => x.address === origin);
    if (!e) return { kind: "unknown" };
    const t = trustOf(e, NOW / 1000);
    if (!t.trusted) return t.reason === "expired" ? { kind: "expired", validUntil: e.validUntil } : { kind: "untrusted", why: t.reason };
    const sender = [a, b, c].find((x) => x.address === origin) as Coord;
    return { kind: "ok", keyid: `${e.keyId}:${receiver.keyId}`, key: pairKey(receiver.privateKey, receiver, sender.publicKey, sender) };
  };
}

const request = (o: Partial<RequestParts> = {}): RequestParts => ({
  method: "POST",
  authority: "b.example:8787",
  target: "/federation/v1/ping?x=1",
  body: '{"hello":"b"}',
  origin: a.address,
  destination: b.address,
  ...o,
});

/** A signs for B (or as told); the request as B's server sees it. */
function signed(o: { parts?: Partial<RequestParts>; key?: Uint8Array; now?: number; validityS?: number; keyid?: string } = {}) {
  const parts = request(o.parts);
  const headers = signRequest(o.key ?? key(a, b), parts, {
    keyid: o.keyid ?? `${a.keyId}:${b.keyId}`,
    now: o.now ?? NOW,
    validityS: o.validityS,
  });
  const inbound: InboundRequest = {
    method: parts.method,
    authority: parts.authority,
    target: parts.target,
    headers: { ...headers },
    body: parts.body,
  };
  return inbound;
}

const verifyAtB = (r: InboundRequest, entries = [entry(a), entry(c)], now = NOW) => verifyRequest(r, b.address, lookupAt(b, entries), now);
const reason = (v: ReturnType<typeof verifyRequest>) => (v.ok ? "ok" : v.reason);

describe("pair keys", () => {
  it("are the same on both ends, differ per pair and change with either key id", () => {
    expect(key(a, b).equals(key(b, a))).toBe(true);
    expect(key(a, b)).toHaveLength(32);
    expect(key(a, b).equals(key(a, c))).toBe(false);
    expect(key(c, b).equals(key(a, b))).toBe(false);
    const renewed = { ...b, keyId: 5 };
    expect(key(a, renewed).equals(key(a, b))).toBe(false);
    expect(key(a, renewed).equals(key(renewed, a))).toBe(true);
  });

  it("refuse a point that is not on the curve, and a pair of one", () => {
    expect(() => pairKey(a.privateKey, a, `0x${"11".repeat(64)}`, b)).toThrow();
    expect(() => key(a, a)).toThrow(/two different/);
  });
});

describe("signed federation requests", () => {
  it("verify with the pair key, naming the origin", () => {
    const v = verifyAtB(signed());
    expect(v).toMatchObject({ ok: true, origin: a.address });
    // a request without a body signs the empty body's digest
    expect(reason(verifyAtB(signed({ parts: { method: "GET", body: "", target: "/federation/v1/x" } })))).toBe("ok");
  });

  it("refuse a forged signature: a key that is not the pair's", () => {
    expect(reason(verifyAtB(signed({ key: key(c, b) })))).toBe("bad_signature");
    expect(reason(verifyAtB(signed({ key: Buffer.alloc(32, 7) })))).toBe("bad_signature");
    // C claims to be A with its own pair key with B
    expect(reason(verifyAtB(signed({ key: key(c, b), parts: { origin: a.address } })))).toBe("bad_signature");
  });

  it("refuse a request addressed to another site, and one whose destination was rewritten", () => {
    const toC = signed({ parts: { destination: c.address }, key: key(a, c), keyid: `${a.keyId}:${c.keyId}` });
    expect(reason(verifyAtB(toC))).toBe("wrong_destination");
    toC.headers[FEDERATION_HEADERS.destination] = b.address;
    expect(reason(verifyAtB(toC))).not.toBe("ok");
  });

  it("refuse a body changed after signing, with or without a matching digest", () => {
    const r = signed();
    expect(reason(verifyAtB({ ...r, body: '{"hello":"c"}' }))).toBe("digest_mismatch");
    const other = signed({ parts: { body: '{"hello":"c"}' } });
    const swapped = {
      ...r,
      body: other.body,
      headers: { ...r.headers, [FEDERATION_HEADERS.contentDigest]: other.headers[FEDERATION_HEADERS.contentDigest] },
    };
    expect(reason(verifyAtB(swapped))).toBe("bad_signature");
  });

  it("refuse a timestamp outside the window, allowing a few seconds of clock skew", () => {
    const r = signed();
    expect(reason(verifyAtB(r, undefined, NOW + 3_000))).toBe("ok");
    expect(reason(verifyAtB(r, undefined, NOW + (MAX_VALIDITY_S + 3) * 1000))).toBe("ok");
    expect(reason(verifyAtB(r, undefined, NOW + (MAX_VALIDITY_S + 10) * 1000))).toBe("stale");
    expect(reason(verifyAtB(signed({ now: NOW + 30_000 })))).toBe("stale");
    expect(reason(verifyAtB(signed({ now: NOW + 3_000 })))).toBe("ok");
    // a signature claiming more than the longest validity
    const long = signed();
    long.headers[FEDERATION_HEADERS.signatureInput] = String(long.headers[FEDERATION_HEADERS.signatureInput]).replace(
      /expires=\d+/,
      `expires=${NOW / 1000 + 3600}`,
    );
    expect(reason(verifyAtB(long))).toBe("stale");
  });

  it("refuse tampered signature parameters: nonce, created, expires, key id are all covered", () => {
    const tamper = (pattern: RegExp, replacement: string) => {
      const r = signed();
      const before = String(r.headers[FEDERATION_HEADERS.signatureInput]);
      r.headers[FEDERATION_HEADERS.signatureInput] = before.replace(pattern, replacement);
      expect(r.headers[FEDERATION_HEADERS.signatureInput]).not.toBe(before);
      return reason(verifyAtB(r));
    };
    expect(tamper(/nonce="[^"]+"/, 'nonce="AAAAAAAAAAAAAAAAAAAAAAAA"')).toBe("bad_signature");
    expect(tamper(/created=\d+/, `created=${NOW / 1000 + 1}`)).toBe("bad_signature");
    expect(tamper(/expires=\d+/, `expires=${NOW / 1000 + 59}`)).toBe("bad_signature");
    expect(tamper(/keyid="[^"]+"/, 'keyid="1:3"')).toBe("key_unknown");
    // a signature that leaves a component out is refused, whatever it signed
    expect(tamper(/ "content-digest"/, "")).toBe("missing");
  });

  it("refuse another method, path, query or authority than the one signed", () => {
    const r = signed();
    expect(reason(verifyAtB({ ...r, method: "PUT" }))).toBe("bad_signature");
    expect(reason(verifyAtB({ ...r, target: "/federation/v1/jobs?x=1" }))).toBe("bad_signature");
    expect(reason(verifyAtB({ ...r, target: "/federation/v1/ping?x=2" }))).toBe("bad_signature");
    expect(reason(verifyAtB({ ...r, target: "/federation/v1/ping" }))).toBe("bad_signature");
    expect(reason(verifyAtB({ ...r, authority: "evil.example" }))).toBe("bad_signature");
  });

  it("refuse unknown, untrusted, revoked and expired peers, and a stale key id", () => {
    expect(reason(verifyAtB(signed(), [entry(c)]))).toBe("unknown_peer");
    expect(reason(verifyAtB(signed(), [entry(a, { status: "pending" })]))).toBe("untrusted_peer");
    expect(reason(verifyAtB(signed(), [entry(a, { status: "pending", endorsed: true })]))).toBe("ok");
    expect(reason(verifyAtB(signed(), [entry(a, { status: "revoked", endorsed: true })]))).toBe("untrusted_peer");
    expect(reason(verifyAtB(signed(), [entry(a, { validUntil: NOW / 1000 - 1 })]))).toBe("key_expired");
    // B's registry says A renewed its key: the old pair key is not accepted
    expect(reason(verifyAtB(signed(), [entry(a, { keyId: 2 })]))).toBe("key_unknown");
  });

  it("refuse requests without a signature, or with malformed headers", () => {
    const r = signed();
    for (const h of Object.values(FEDERATION_HEADERS)) {
      const headers = { ...r.headers };
      delete headers[h];
      expect(reason(verifyAtB({ ...r, headers })), h).toBe("missing");
    }
    expect(reason(verifyAtB({ ...r, headers: { ...r.headers, [FEDERATION_HEADERS.signature]: "sllm=nope" } }))).toBe("missing");
    expect(reason(verifyAtB({ ...r, headers: { ...r.headers, [FEDERATION_HEADERS.origin]: "a.example" } }))).toBe("missing");
  });
});

describe("hostile federation requests", () => {
  it("are refused from their headers alone, before any body is read", () => {
    const r = signed();
    const { body: _, ...headersOnly } = r;
    const at = (x: Omit<InboundRequest, "body">, entries = [entry(a)]) => verifyHeaders(x, b.address, lookupAt(b, entries), NOW);
    expect(at(headersOnly).ok).toBe(true);
    expect(at({ ...headersOnly, headers: {} })).toMatchObject({ ok: false, reason: "missing" });
    expect(at(headersOnly, [])).toMatchObject({ ok: false, reason: "unknown_peer" });
    expect(at(headersOnly, [entry(a, { status: "revoked" })])).toMatchObject({ ok: false, reason: "untrusted_peer" });
    expect(verifyHeaders(headersOnly, b.address, lookupAt(b, [entry(a)]), NOW + 120_000)).toMatchObject({ ok: false, reason: "stale" });
  });

  it("cost little to refuse however their headers are made (no backtracking blow-up on 16 KiB values)", () => {
    const r = signed();
    const input = r.headers[FEDERATION_HEADERS.signatureInput] as string;
    const nasty = [
      `sllm=(${'"a" '.repeat(4_000)}`,
      `sllm=()${";a=1".repeat(4_000)};`,
      `sllm=()${';a="'.repeat(4_000)}`,
      `sllm=(${")".repeat(16_000)}`,
      `${input}${";created=1".repeat(1_500)}`,
      `sllm=("@method")${';x="\\'.repeat(3_000)}"`,
    ];
    const started = performance.now();
    for (const value of nasty) {
      expect(reason(verifyAtB({ ...r, headers: { ...r.headers, [FEDERATION_HEADERS.signatureInput]: value } }))).toBe("missing");
    }
    const signature = `sllm=:${"A".repeat(16_000)}`;
    expect(reason(verifyAtB({ ...r, headers: { ...r.headers, [FEDERATION_HEADERS.signature]: signature } }))).toBe("missing");
    // a header sent twice arrives as an array: refused, not joined
    expect(reason(verifyAtB({ ...r, headers: { ...r.headers, [FEDERATION_HEADERS.origin]: [a.address, a.address] } }))).toBe("missing");
    expect(performance.now() - started).toBeLessThan(200);
  });
});

describe("trust", () => {
  it("is an admitted peer, or a pending one this site endorsed; never revoked or expired", () => {
    const now = NOW / 1000;
    expect(trustOf(entry(a), now)).toEqual({ trusted: true, path: "admitted" });
    expect(trustOf(entry(a, { status: "pending", endorsed: true }), now)).toEqual({ trusted: true, path: "endorsed" });
    expect(trustOf(entry(a, { status: "pending" }), now)).toEqual({ trusted: false, reason: "not_admitted" });
    expect(trustOf(entry(a, { status: "revoked", endorsed: true }), now)).toEqual({ trusted: false, reason: "revoked" });
    expect(trustOf(entry(a, { validUntil: now }), now)).toEqual({ trusted: false, reason: "expired" });
  });
});
