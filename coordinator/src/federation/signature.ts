/**
 * Signed coordinator-to-coordinator requests: an RFC 9421-style HTTP message signature with
 * HMAC-SHA256 under the pair key (pairKey.ts), over the method, authority, path and query, the
 * body's RFC 9530 `Content-Digest`, the origin and destination coordinators, and the signature
 * parameters (created, expires, nonce, keyid, alg, tag). Everything the MAC protects is in the
 * base, the parameters included (docs/federation.md spells the base out). Pure: the trust, the
 * keys and the nonce store come from the caller.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import type { Address } from "viem";

export const FEDERATION_HEADERS = {
  signatureInput: "signature-input",
  signature: "signature",
  contentDigest: "content-digest",
  origin: "sharedllm-origin",
  destination: "sharedllm-destination",
} as const;

/** The signature's label in `Signature-Input` and `Signature`. */
export const SIGNATURE_LABEL = "sllm";
/** The covered components, in this order, always all of them. */
export const COVERED = ["@method", "@authority", "@path", "@query", "content-digest", "sharedllm-origin", "sharedllm-destination"] as const;
export const SIGNATURE_ALG = "hmac-sha256";
export const SIGNATURE_TAG = "sharedllm-federation";
/** Longest validity a signature may claim (expires - created), seconds. */
export const MAX_VALIDITY_S = 60;
/** How far the ends' clocks may disagree, seconds. */
export const CLOCK_SKEW_S = 5;

export interface RequestParts {
  method: string;
  /** host[:port] as in the request's URL (the Host header on the receiving side) */
  authority: string;
  /** path with its query string, if any (`/federation/v1/ping?x=1`) */
  target: string;
  body: Uint8Array | string;
  origin: Address;
  destination: Address;
}

export interface SignatureParams {
  created: number;
  expires: number;
  nonce: string;
  /** `<origin key id>:<destination key id>`: the two registered keys the pair key came from */
  keyid: string;
}

/** `sha-256=:<base64>:` (RFC 9530) of the body's bytes. */
export function contentDigest(body: Uint8Array | string): string {
  return `sha-256=:${createHash("sha256").update(body).digest("base64")}:`;
}

/** The `@signature-params` value (also what `Signature-Input` carries after the label). */
export function serializeParams(p: SignatureParams): string {
  const components = COVERED.map((c) => `"${c}"`).join(" ");
  return `(${components});created=${p.created};expires=${p.expires};nonce="${p.nonce}";keyid="${p.keyid}";alg="${SIGNATURE_ALG}";tag="${SIGNATURE_TAG}"`;
}

/** The signature base (RFC 9421 section 2.5): one line per covered component, then the parameters. */
export function signatureBase(r: Omit<RequestParts, "body">, digest: string, params: string): string {
  const q = r.target.indexOf("?");
  const path = q < 0 ? r.target : r.target.slice(0, q);
  const query = q < 0 ? "?" : r.target.slice(q);
  const values: Record<(typeof COVERED)[number], string> = {
    "@method": r.method.toUpperCase(),
    "@authority": r.authority.toLowerCase(),
    "@path": path,
    "@query": query,
    "content-digest": digest,
    "sharedllm-origin": r.origin.toLowerCase(),
    "sharedllm-destination": r.destination.toLowerCase(),
  };
  return `${COVERED.map((c) => `"${c}": ${values[c]}`).join("\n")}\n"@signature-params": ${params}`;
}

const mac = (key: Uint8Array, base: string) => createHmac("sha256", key).update(base).digest();

/** The headers that sign one request under the pair key. */
export function signRequest(
  key: Uint8Array,
  r: RequestParts,
  o: { keyid: string; now?: number; validityS?: number; nonce?: string },
): Record<(typeof FEDERATION_HEADERS)[keyof typeof FEDERATION_HEADERS], string> {
  const created = Math.floor((o.now ?? Date.now()) / 1000);
  const params = serializeParams({
    created,
    expires: created + Math.min(o.validityS ?? MAX_VALIDITY_S, MAX_VALIDITY_S),
    nonce: o.nonce ?? randomBytes(18).toString("base64url"),
    keyid: o.keyid,
  });
  const digest = contentDigest(r.body);
  return {
    [FEDERATION_HEADERS.contentDigest]: digest,
    [FEDERATION_HEADERS.origin]: r.origin.toLowerCase(),
    [FEDERATION_HEADERS.destination]: r.destination.toLowerCase(),
    [FEDERATION_HEADERS.signatureInput]: `${SIGNATURE_LABEL}=${params}`,
    [FEDERATION_HEADERS.signature]: `${SIGNATURE_LABEL}=:${mac(key, signatureBase(r, digest, params)).toString("base64")}:`,
  };
}

/** Why a request is refused; each has its error code and HTTP status (plugin.ts). */
export type Refusal =
  | "missing"
  | "wrong_destination"
  | "unknown_peer"
  | "untrusted_peer"
  | "key_expired"
  | "key_unknown"
  | "stale"
  | "digest_mismatch"
  | "bad_signature"
  | "replayed";

/** What the verifier knows of the claimed origin. */
export type PeerLookup =
  | { kind: "unknown" }
  | { kind: "untrusted"; why: string }
  | { kind: "expired"; validUntil: number }
  | { kind: "ok"; keyid: string; key: Uint8Array };

export interface InboundRequest {
  method: string;
  authority: string;
  target: string;
  headers: Record<string, string | string[] | undefined>;
  body: Uint8Array | string;
}

export type Verified = { ok: true; origin: Address; nonce: string; expires: number };
export type Refused = { ok: false; reason: Refusal; detail: string };

const INPUT_RE = new RegExp(`^${SIGNATURE_LABEL}=\\(([^)]*)\\)((?:;[a-z]+=(?:[0-9]+|"[^"\\\\]*"))*)$`);
const SIGNATURE_RE = new RegExp(`^${SIGNATURE_LABEL}=:([A-Za-z0-9+/]+={0,2}):$`);
const ADDRESS_RE = /^0x[0-9a-f]{40}$/;

function header(h: InboundRequest["headers"], name: string): string | undefined {
  const v = h[name];
  return typeof v === "string" ? v.trim() : undefined;
}

/** The parameters of a `Signature-Input` value that names exactly COVERED, or why not. */
function parseInput(value: string): { params: SignatureParams; raw: string } | string {
  const m = INPUT_RE.exec(value);
  if (!m) return `Signature-Input must be ${SIGNATURE_LABEL}=(<components>);created=...;expires=...;nonce="...";keyid="..."`;
  const components = (m[1] ?? "").split(" ").filter(Boolean);
  if (components.join(" ") !== COVERED.map((c) => `"${c}"`).join(" ")) return `the signature must cover ${COVERED.join(", ")}`;
  const p = new Map<string, string>();
  for (const part of (m[2] ?? "").split(";").slice(1)) {
    const eq = part.indexOf("=");
    const name = part.slice(0, eq);
    if (p.has(name)) return `parameter ${name} given twice`;
    p.set(name, part.slice(eq + 1).replace(/^"|"$/g, ""));
  }
  const names = [...p.keys()].sort().join(",");
  if (names !== "alg,created,expires,keyid,nonce,tag") return "the signature needs exactly created, expires, nonce, keyid, alg and tag";
  if (p.get("alg") !== SIGNATURE_ALG || p.get("tag") !== SIGNATURE_TAG) return `alg must be ${SIGNATURE_ALG} and tag ${SIGNATURE_TAG}`;
  const created = Number(p.get("created"));
  const expires = Number(p.get("expires"));
  const nonce = p.get("nonce") ?? "";
  if (!Number.isSafeInteger(created) || !Number.isSafeInteger(expires)) return "created and expires must be whole seconds";
  if (!/^[A-Za-z0-9_-]{16,128}$/.test(nonce)) return "the nonce must be 16 to 128 characters of base64url";
  return { params: { created, expires, nonce, keyid: p.get("keyid") ?? "" }, raw: value.slice(SIGNATURE_LABEL.length + 1) };
}

/** What the headers of a request whose body is still to be checked say, once they hold. */
interface SignedHeaders {
  ok: true;
  origin: Address;
  digest: string;
  params: SignatureParams;
  raw: string;
  signature: string;
  key: Uint8Array;
}

/**
 * The checks that need no body: a request they refuse is refused before its body is read
 * (docs/security.md, "Hostile input"), so a stranger's unsigned body costs no memory.
 */
export function verifyHeaders(
  r: Omit<InboundRequest, "body">,
  self: Address,
  lookup: (origin: Address) => PeerLookup,
  now = Date.now(),
): SignedHeaders | Refused {
  const refuse = (reason: Refusal, detail: string): Refused => ({ ok: false, reason, detail });
  const input = header(r.headers, FEDERATION_HEADERS.signatureInput);
  const signature = header(r.headers, FEDERATION_HEADERS.signature);
  const digest = header(r.headers, FEDERATION_HEADERS.contentDigest);
  const origin = header(r.headers, FEDERATION_HEADERS.origin)?.toLowerCase();
  const destination = header(r.headers, FEDERATION_HEADERS.destination)?.toLowerCase();
  if (!input || !signature || !digest || !origin || !destination) {
    return refuse("missing", `sign the request: it needs ${Object.values(FEDERATION_HEADERS).join(", ")}`);
  }
  if (!ADDRESS_RE.test(origin) || !ADDRESS_RE.test(destination)) return refuse("missing", "origin and destination must be addresses");
  const parsed = parseInput(input);
  if (typeof parsed === "string") return refuse("missing", parsed);
  const sig = SIGNATURE_RE.exec(signature);
  if (!sig) return refuse("missing", `Signature must be ${SIGNATURE_LABEL}=:<base64>:`);
  if (destination !== self.toLowerCase()) {
    return refuse("wrong_destination", `this request is addressed to ${destination}; this coordinator is ${self.toLowerCase()}`);
  }
  const peer = lookup(origin as Address);
  if (peer.kind === "unknown") return refuse("unknown_peer", `${origin} is not registered in the federation registry`);
  if (peer.kind === "untrusted") return refuse("untrusted_peer", `${origin} is not trusted by this site: ${peer.why}`);
  if (peer.kind === "expired") {
    return refuse("key_expired", `${origin}'s key expired at ${new Date(peer.validUntil * 1000).toISOString()}; it must renew it`);
  }
  const { params } = parsed;
  if (params.keyid !== peer.keyid) {
    return refuse("key_unknown", `key id ${params.keyid} is not the registered pair ${peer.keyid}: re-read the registry`);
  }
  const nowS = now / 1000;
  if (params.expires <= params.created || params.expires - params.created > MAX_VALIDITY_S) {
    return refuse("stale", `a signature is valid for at most ${MAX_VALIDITY_S} s after it was created`);
  }
  if (params.created > nowS + CLOCK_SKEW_S || params.expires < nowS - CLOCK_SKEW_S) {
    return refuse("stale", "the signature was created in the future or has expired; check the clocks of both coordinators");
  }
  return { ok: true, origin: origin as Address, digest, params, raw: parsed.raw, signature: sig[1] ?? "", key: peer.key };
}

/**
 * Checks a signed request, cheapest and least revealing checks first; the nonce is not checked
 * here (the caller remembers it once everything else holds, so forged requests fill no table).
 * `now` is ms.
 */
export function verifyRequest(
  r: InboundRequest,
  self: Address,
  lookup: (origin: Address) => PeerLookup,
  now = Date.now(),
): Verified | Refused {
  const h = verifyHeaders(r, self, lookup, now);
  if (!h.ok) return h;
  if (h.digest !== contentDigest(r.body)) {
    return { ok: false, reason: "digest_mismatch", detail: "Content-Digest does not match the body: it changed after signing" };
  }
  const expected = mac(
    h.key,
    signatureBase({ method: r.method, authority: r.authority, target: r.target, origin: h.origin, destination: self }, h.digest, h.raw),
  );
  const got = Buffer.from(h.signature, "base64");
  if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
    return {
      ok: false,
      reason: "bad_signature",
      detail: "the signature does not match: forged, altered in transit, or signed with another key",
    };
  }
  return { ok: true, origin: h.origin, nonce: h.params.nonce, expires: h.params.expires };
}
