/**
 * The pure parts of forwarding a job to a peer site (docs/federation.md): which trusted peer
 * gets a job no unit here can take (`choosePeer`), and the private NDJSON stream a serving site
 * answers a forwarded job with (`forwardedLine`, `LineReader`).
 */
import { type AdvertisedModel, type ForwardedLine, federationReceiptWireSchema, MAX_TOKENS_PER_CHUNK } from "@sharedllm/protocol";
import type { Hex } from "viem";

/** A trusted peer as the scheduler sees it: what it last advertised, and what this site sent it since. */
export interface PeerOffer {
  address: string;
  /** false while it takes no forwarded jobs */
  inbound: boolean;
  models: readonly AdvertisedModel[];
  latencyMs: number;
  /** jobs forwarded to it and not finished: they use its advertised free slots */
  active: number;
}

/** The most a job may cost per 1000 tokens at a peer (the price the user pays here). */
export interface PriceLimit {
  prompt: bigint;
  completion: bigint;
}

/**
 * The peer to forward a job for `model` to: one that takes forwarded jobs, serves the model,
 * has a free slot left after the jobs this site already sent it, and costs no more than `limit`
 * per 1000 tokens. Among those the cheapest (completion, then prompt price) wins, then the one
 * with the lower measured latency, then the lower address, so the choice is deterministic.
 */
export function choosePeer(
  offers: Iterable<PeerOffer>,
  model: string,
  limit?: PriceLimit,
  allow: (address: string) => boolean = () => true,
): PeerOffer | undefined {
  let best: { offer: PeerOffer; completion: bigint; prompt: bigint } | undefined;
  for (const offer of offers) {
    if (!offer.inbound || !allow(offer.address)) continue;
    const m = offer.models.find((x) => x.id === model);
    if (!m || !(m.freeSlots - offer.active > 0)) continue;
    const completion = BigInt(m.pricePer1k.completion);
    const prompt = BigInt(m.pricePer1k.prompt);
    if (limit && (completion > limit.completion || prompt > limit.prompt)) continue;
    if (!best || cheaper({ offer, completion, prompt }, best)) best = { offer, completion, prompt };
  }
  return best?.offer;
}

function cheaper(
  a: { offer: PeerOffer; completion: bigint; prompt: bigint },
  b: { offer: PeerOffer; completion: bigint; prompt: bigint },
): boolean {
  if (a.completion !== b.completion) return a.completion < b.completion;
  if (a.prompt !== b.prompt) return a.prompt < b.prompt;
  if (a.offer.latencyMs !== b.offer.latencyMs) return a.offer.latencyMs < b.offer.latencyMs;
  return a.offer.address < b.offer.address;
}

/** The longest text of a peer's that reaches a user (its error messages). */
export const MAX_PEER_MESSAGE = 300;

/** A peer's text made fit for a user: control characters out, at most MAX_PEER_MESSAGE characters. */
export function peerMessage(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are what it removes
  const clean = text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, " ").trim();
  return clean.length > MAX_PEER_MESSAGE ? `${clean.slice(0, MAX_PEER_MESSAGE)}…` : clean;
}

/**
 * How a peer's failure counts here: only a request the peer found bad (400) or too large (413)
 * is the client's, with that status; anything else another unit may do (retryable, no status).
 */
export function peerFailure(status: number | undefined, message: string): { message: string; retryable: boolean; status?: number } {
  const clientFault = status === 400 || status === 413;
  return clientFault ? { message: peerMessage(message), retryable: false, status } : { message: peerMessage(message), retryable: true };
}

/** One line of a forwarded job's answer. */
export function forwardedLine(line: ForwardedLine): string {
  return `${JSON.stringify(line)}\n`;
}

/** The longest line a serving site may send (an event with its token ids). */
export const MAX_LINE_BYTES = 1 << 20;

/**
 * Reads a forwarded job's NDJSON answer as it arrives in pieces: `push` returns the whole lines
 * received so far, checked; a line that is not one throws (the peer failed the job). Only new
 * text is searched for line ends, so a long line arriving in small pieces costs linear time.
 */
export class LineReader {
  /** the pieces of the line not yet ended */
  private pieces: string[] = [];
  private pending = 0;

  push(text: string): ForwardedLine[] {
    const out: ForwardedLine[] = [];
    let from = 0;
    let nl = text.indexOf("\n");
    while (nl >= 0) {
      this.pieces.push(text.slice(from, nl));
      const raw = this.pieces.join("");
      this.pieces = [];
      this.pending = 0;
      if (raw.length > MAX_LINE_BYTES) throw new Error(`the peer sent a line longer than ${MAX_LINE_BYTES} bytes`);
      if (raw.trim()) out.push(parseLine(raw));
      from = nl + 1;
      nl = text.indexOf("\n", from);
    }
    if (from < text.length) {
      this.pieces.push(text.slice(from));
      this.pending += text.length - from;
    }
    if (this.pending > MAX_LINE_BYTES) throw new Error(`the peer sent a line longer than ${MAX_LINE_BYTES} bytes`);
    return out;
  }

  /** whether part of a line is still waiting for its end */
  get partial(): boolean {
    return this.pieces.join("").trim().length > 0;
  }
}

/** a count or a token id: an integer 0 <= n < 2^31 */
const isCount = (n: unknown): n is number => typeof n === "number" && Number.isInteger(n) && n >= 0 && n < 2 ** 31;
/** what one event may stream, as for a node's chunk frames (decodeChunkFrame) */
const isTokens = (t: unknown): t is number[] | number =>
  isCount(t) ? t <= MAX_TOKENS_PER_CHUNK : Array.isArray(t) && t.length <= MAX_TOKENS_PER_CHUNK && t.every(isCount);

/** One line, checked: a stranger's bytes until proven otherwise. */
export function parseLine(raw: string): ForwardedLine {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new Error("the peer sent a line that is not JSON");
  }
  if (typeof v !== "object" || v === null) throw new Error("the peer sent a line that is not an object");
  const o = v as Record<string, unknown>;
  if (o.c === 1) {
    const t = o.t;
    if (typeof o.d !== "string" || !isTokens(t)) {
      throw new Error("the peer sent an event without its text or tokens");
    }
    // an event's data is one line (JSON has none in it): a line break would inject events into the client's stream
    if (/[\r\n]/.test(o.d)) throw new Error("the peer sent an event whose text spans lines");
    return { c: 1, d: o.d, t: t as number[] | number };
  }
  if (o.p !== undefined) {
    if (!isCount(o.p)) throw new Error("the peer sent a prompt count that is not a count");
    return { p: o.p };
  }
  if (o.end !== undefined) {
    const u = o.end as Record<string, unknown>;
    if (typeof u !== "object" || u === null || !isCount(u.prompt_tokens) || !isCount(u.completion_tokens)) {
      throw new Error("the peer sent an end without its usage");
    }
    const usage = { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens };
    // a receipt that does not parse is as good as none: the origin accepts nothing for the job
    const receipt = o.receipt === undefined ? undefined : federationReceiptWireSchema.safeParse(o.receipt).data;
    const signature = typeof o.signature === "string" && /^0x[0-9a-fA-F]{130}$/.test(o.signature) ? (o.signature as Hex) : undefined;
    return {
      end: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens },
      ...(receipt && signature && { receipt, signature }),
    };
  }
  if (o.error !== undefined) {
    const e = o.error as Record<string, unknown>;
    if (typeof e !== "object" || e === null || typeof e.message !== "string") throw new Error("the peer sent an error without a message");
    const status = isCount(e.status) ? e.status : undefined;
    return { error: { message: e.message, retryable: e.retryable === true, ...(status !== undefined && { status }) } };
  }
  throw new Error("the peer sent a line of no known kind");
}
