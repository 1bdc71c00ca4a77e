/**
 * The pure parts of forwarding a job to a peer site (docs/federation.md): which trusted peer
 * gets a job no unit here can take (`choosePeer`), and the private NDJSON stream a serving site
 * answers a forwarded job with (`forwardedLine`, `LineReader`).
 */
import { type AdvertisedModel, type ForwardedLine, federationReceiptWireSchema } from "@sharedllm/protocol";
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
    if (!m || m.freeSlots - offer.active <= 0) continue;
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

/** One line of a forwarded job's answer. */
export function forwardedLine(line: ForwardedLine): string {
  return `${JSON.stringify(line)}\n`;
}

/** The longest line a serving site may send (an event with its token ids). */
export const MAX_LINE_BYTES = 1 << 20;

/**
 * Reads a forwarded job's NDJSON answer as it arrives in pieces: `push` returns the whole lines
 * received so far, checked; a line that is not one throws (the peer failed the job).
 */
export class LineReader {
  private buffered = "";

  push(text: string): ForwardedLine[] {
    this.buffered += text;
    const out: ForwardedLine[] = [];
    let nl = this.buffered.indexOf("\n");
    while (nl >= 0) {
      const raw = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      if (raw.trim()) out.push(parseLine(raw));
      nl = this.buffered.indexOf("\n");
    }
    if (this.buffered.length > MAX_LINE_BYTES) throw new Error(`the peer sent a line longer than ${MAX_LINE_BYTES} bytes`);
    return out;
  }

  /** whether part of a line is still waiting for its end */
  get partial(): boolean {
    return this.buffered.trim().length > 0;
  }
}

const isCount = (n: unknown): n is number => typeof n === "number" && Number.isInteger(n) && n >= 0;

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
    if (typeof o.d !== "string" || !(isCount(t) || (Array.isArray(t) && t.every(isCount)))) {
      throw new Error("the peer sent an event without its text or tokens");
    }
    return { c: 1, d: o.d, t: t as number[] | number };
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
