/**
 * What a job has produced so far, from the events its units streamed (docs/continuation.md):
 *
 * - the tokens, counted by the coordinator (not taken from a node's report), and their ids while
 *   the units told every one; after the first event whose ids were not all told, the text;
 * - the bytes of generated text, which bound what the job may be charged (ledger/usage.ts);
 * - the response's identity (`id`, `created`, `model`) from the first event, which the events of
 *   a continuing unit are rewritten to carry, so the client sees one stream;
 * - the parts of a whole response, assembled for a client that did not ask for a stream.
 *
 * A continuing unit runs the prompt plus the output so far as a plain completion, so its events
 * are completion events; `add` reshapes them into the job's kind.
 *
 * Every event is a stranger's: `add` reads it defensively and never throws.
 */
import { type JobKind, type JobStart, MAX_RESUME_TEXT, MAX_RESUME_TOKENS, UNTOLD_TOKEN } from "@sharedllm/protocol";
import { UNRELAYED_TOKENS } from "../ledger/usage.js";

type Json = Record<string, unknown>;

/** Tokens and events a job's units may stream beyond its limit before the job counts as overrun. */
const OVERRUN_SLACK = 64;
/** The most text one token can stand for (a vocabulary's longest pieces are a few dozen bytes). */
const MAX_TOKEN_BYTES = 1024;

interface ToolCall {
  id?: string;
  type?: string;
  function: { name: string; arguments: string };
}

export class Transcript {
  /** generated tokens streamed, every unit's together */
  tokens = 0;
  /** bytes of generated text streamed: what bounds the charge */
  bytes = 0;
  /** events streamed, every unit's together */
  private events = 0;
  /** ids of the tokens streamed, while every event told them */
  private readonly ids: number[] = [];
  /** every token streamed, in order (up to the job's limit): its id, or UNTOLD_TOKEN; receipts commit to these (outputHash) */
  readonly told: number[] = [];
  /** the text streamed since the first event that did not tell all its ids */
  private tail: string | undefined;
  /** false once the output holds what a plain completion cannot carry on (tool calls), or more tokens than the job may have */
  private resumable: boolean;
  private identity: { id?: unknown; created?: unknown; model?: unknown; system_fingerprint?: unknown };
  private content = "";
  private reasoning = "";
  private readonly toolCalls: ToolCall[] = [];
  /** whether a unit named the response (its first event's `id`) */
  private named = false;
  private logprobs: unknown[] | undefined;
  private finishReason: unknown = null;
  private readonly kind: JobKind;
  /** the most tokens a job may stream (its generation limit and the end token's margin) */
  private readonly maxTokens: number;
  private readonly stopBytes: number;
  /** the last event's shape, when it carried only content: the text around its content's string */
  private template: { prefix: string; suffix: string } | undefined;

  constructor(o: {
    kind: JobKind;
    /** whether the request may be continued at all (one choice, no tools or forced format) */
    resumable: boolean;
    maxTokens: number;
    /** the bytes of the request's stop strings: their tokens end a stream without being relayed */
    stopBytes?: number;
    /** the response's identity when no unit gave it one */
    id: string;
    model: string;
  }) {
    this.kind = o.kind;
    this.resumable = o.resumable;
    this.maxTokens = o.maxTokens;
    this.stopBytes = o.stopBytes ?? 0;
    this.identity = { id: o.id, created: Math.floor(Date.now() / 1000), model: o.model };
  }

  /**
   * One event from a unit: counted, and what a streaming client is to get for it returned (the
   * event unchanged from the job's first unit; reshaped, or nothing, from a continuing one).
   */
  add(data: string, tokens: readonly number[] | number, continued: boolean): string | undefined {
    this.events += 1;
    const t = this.template;
    if (t && data.length >= t.prefix.length + t.suffix.length && data.startsWith(t.prefix) && data.endsWith(t.suffix)) {
      const content = data.slice(t.prefix.length, data.length - t.suffix.length);
      if (plainString(content)) return this.addContent(content, tokens, continued, data);
    }
    let event: Json;
    try {
      event = data.charCodeAt(0) === 123 /* { */ ? (JSON.parse(data) as Json) : {};
    } catch {
      event = {}; // not JSON: no text the client could use
    }
    if (!this.named && typeof event.id === "string") {
      this.named = true;
      this.identity = { id: event.id, created: event.created, model: event.model, system_fingerprint: event.system_fingerprint };
    }
    const first: unknown = Array.isArray(event.choices) ? event.choices[0] : undefined;
    const choice = isObject(first) ? first : undefined;
    let text = "";
    let reasoning = "";
    if (choice) {
      const delta = isObject(choice.delta) ? choice.delta : undefined;
      text = str(choice.text) + str(delta?.content);
      reasoning = str(delta?.reasoning_content);
      if (reasoning) {
        this.reasoning += reasoning;
        this.bytes += Buffer.byteLength(reasoning);
      }
      if (delta && Array.isArray(delta.tool_calls)) this.addToolCalls(delta.tool_calls);
      const lp = isObject(choice.logprobs) ? choice.logprobs.content : undefined;
      if (Array.isArray(lp)) {
        this.logprobs ??= [];
        for (const entry of lp) if (this.logprobs.length < this.maxTokens + OVERRUN_SLACK) this.logprobs.push(entry);
      }
      if (choice.finish_reason !== null && choice.finish_reason !== undefined) this.finishReason = choice.finish_reason;
    }
    const ends = choice?.finish_reason !== null && choice?.finish_reason !== undefined;
    this.learn(data, event, choice, reasoning);
    // only a count without ids reads the text
    this.count(tokens, typeof tokens === "number" ? text + reasoning : "", ends);
    this.content += text;
    this.bytes += Buffer.byteLength(text);
    if (this.tail !== undefined) this.tail += text;
    // a unit's usage is its word (a continuing unit's counts its re-prefill too): the client that
    // asked for usage gets the job's, metered, at the end
    if (!continued) {
      if (!event.usage) return data;
      if (!choice) return undefined;
      delete event.usage;
      return JSON.stringify(event);
    }
    const finish = choice?.finish_reason ?? null;
    if (!text && finish === null) return undefined;
    return JSON.stringify(this.event(text, finish));
  }

  /**
   * An event of the template's shape (`add`): its content, as the whole event's JSON would have
   * given it, counted and relayed as `add` does for such an event (no finish, usage, reasoning,
   * tool calls or log-probabilities).
   */
  private addContent(text: string, tokens: readonly number[] | number, continued: boolean, data: string): string | undefined {
    this.count(tokens, typeof tokens === "number" ? text : "", false);
    this.content += text;
    this.bytes += Buffer.byteLength(text);
    if (this.tail !== undefined) this.tail += text;
    if (!continued) return data;
    if (!text) return undefined;
    return JSON.stringify(this.event(text, null));
  }

  /**
   * Learns the shape of an event that carries only content (an engine's events differ only in
   * it): the text before and after its content's string, so that the next events of that shape
   * are read without parsing (the hot path: one event per token). The content's place is
   * checked by parsing the event once more with another content there: it must change the
   * event's content and nothing else can change with it, as a string stands for one value.
   */
  private learn(data: string, event: Json, choice: Json | undefined, reasoning: string): void {
    this.template = undefined;
    // what `add` reads from an event beside its content: none of it may be there
    const delta = isObject(choice?.delta) ? choice.delta : undefined;
    if (!choice || !delta || typeof delta.content !== "string" || typeof choice.text === "string" || reasoning || event.usage) return;
    if (Array.isArray(delta.tool_calls) || (isObject(choice.logprobs) && Array.isArray(choice.logprobs.content))) return;
    if ((choice.finish_reason !== null && choice.finish_reason !== undefined) || (!this.named && event.id !== undefined)) return;
    const key = '"content":"';
    const at = data.indexOf(key);
    if (at < 0 || data.indexOf(key, at + 1) >= 0) return;
    const start = at + key.length;
    const end = data.indexOf('"', start);
    if (end < 0 || data.slice(start, end) !== delta.content || !plainString(delta.content)) return;
    const prefix = data.slice(0, start);
    const suffix = data.slice(end);
    try {
      const probe = JSON.parse(`${prefix}#${suffix}`) as Json;
      const c = Array.isArray(probe.choices) ? probe.choices[0] : undefined;
      if (!isObject(c) || !isObject(c.delta) || c.delta.content !== "#") return;
    } catch {
      return;
    }
    this.template = { prefix, suffix };
  }

  /**
   * Counts an event's tokens. Untold ones (a count without ids) are only what the event's text
   * explains: an engine tells no id for a token that ends halfway through a character, so each
   * untold token but one carries a byte of a character beyond ASCII; the last event may add a
   * matched stop string's tokens, which are generated but not relayed. More is not counted (and
   * so not charged, nor signed for): an event of plain text counts at most one untold token, as
   * many as a told one.
   */
  private count(tokens: readonly number[] | number, text: string, ends: boolean): void {
    if (typeof tokens === "number") {
      const allowed = nonAsciiBytes(text) + 1 + (ends ? this.stopBytes : 0);
      const n = Math.min(tokens, allowed);
      this.tokens += n;
      if (n > 0) this.tail ??= "";
      for (let i = 0; i < n && this.told.length < this.maxTokens; i++) this.told.push(UNTOLD_TOKEN);
    } else {
      this.tokens += tokens.length;
      if (this.tail === undefined) for (const id of tokens) this.ids.push(id);
      for (const id of tokens) if (this.told.length < this.maxTokens) this.told.push(id);
    }
    // more than the job may have: the node's word on its tokens is not to be carried on
    if (this.tokens > this.maxTokens) this.resumable = false;
  }

  /**
   * Why the units have streamed more than the job may have (more tokens, events or text than its
   * generation limit explains), or undefined: what is kept and relayed of a job stays bounded
   * whatever a unit sends.
   */
  get overrun(): string | undefined {
    const most = this.maxTokens + OVERRUN_SLACK;
    if (this.tokens > most) return `it streamed ${this.tokens} tokens; the job allows ${this.maxTokens}`;
    if (this.events > 2 * most) return `it streamed ${this.events} events for at most ${this.maxTokens} tokens`;
    if (this.bytes > most * MAX_TOKEN_BYTES) return `it streamed ${this.bytes} bytes of text for at most ${this.maxTokens} tokens`;
    return undefined;
  }

  /** What a continuing unit is given: the output so far, as ids and then text; undefined when the job cannot continue. */
  resume(): NonNullable<JobStart["resume"]> | undefined {
    if (!this.resumable || this.overrun || this.toolCalls.length || this.reasoning) return undefined;
    if (this.ids.length > MAX_RESUME_TOKENS || (this.tail?.length ?? 0) > MAX_RESUME_TEXT) return undefined;
    return { tokens: [...this.ids], text: this.tail ?? "" };
  }

  /** A streamed event carrying `text` (or the usage), in the job's kind and with its identity. */
  event(text: string, finishReason: unknown, usage?: object): Json {
    const choices =
      usage !== undefined
        ? []
        : this.kind === "chat"
          ? [{ index: 0, delta: text ? { content: text } : {}, finish_reason: finishReason }]
          : [{ text, index: 0, logprobs: null, finish_reason: finishReason }];
    return {
      ...this.identity,
      object: this.kind === "chat" ? "chat.completion.chunk" : "text_completion",
      choices,
      ...(usage && { usage }),
    };
  }

  /** The whole response, for a client that did not ask for a stream. */
  body(usage: object): Json {
    const logprobs = this.logprobs ? { content: this.logprobs } : null;
    const choice =
      this.kind === "chat"
        ? {
            index: 0,
            message: {
              role: "assistant",
              content: this.content || (this.toolCalls.length ? null : ""),
              ...(this.reasoning && { reasoning_content: this.reasoning }),
              ...(this.toolCalls.length && { tool_calls: this.toolCalls }),
            },
            logprobs,
            finish_reason: this.finishReason,
          }
        : { text: this.content, index: 0, logprobs, finish_reason: this.finishReason };
    return { ...this.identity, object: this.kind === "chat" ? "chat.completion" : "text_completion", choices: [choice], usage };
  }

  /** Streamed tool-call deltas, merged by index as OpenAI's clients do. */
  private addToolCalls(deltas: unknown[]): void {
    for (const d of deltas) {
      if (!isObject(d)) continue;
      // a new call comes at the next index; anything else adds to the call it names
      const index =
        typeof d.index === "number" && Number.isInteger(d.index) && d.index >= 0 && d.index <= this.toolCalls.length
          ? d.index
          : this.toolCalls.length;
      const fn = isObject(d.function) ? d.function : {};
      const call = this.toolCalls[index] ?? { function: { name: "", arguments: "" } };
      this.toolCalls[index] = call;
      if (typeof d.id === "string") call.id = d.id;
      if (typeof d.type === "string") call.type = d.type;
      call.function.name += str(fn.name);
      call.function.arguments += str(fn.arguments);
      const bytes = Buffer.byteLength(str(fn.name)) + Buffer.byteLength(str(fn.arguments));
      this.bytes += bytes + (typeof d.id === "string" ? UNRELAYED_TOKENS : 0); // the call's own markup is generated too
    }
  }
}

function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function str(v: unknown): string {
  return typeof v === "string" ? v : "";
}

/** Whether `s` is a JSON string's text as it stands: no quote, backslash or control character. */
function plainString(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x20 || c === 0x22 || c === 0x5c) return false;
  }
  return true;
}

/** The UTF-8 bytes of the characters beyond ASCII in `s`. */
function nonAsciiBytes(s: string): number {
  let n = 0;
  for (const ch of s) {
    const c = ch.codePointAt(0) as number;
    if (c > 0x7f) n += c > 0xffff ? 4 : c > 0x7ff ? 3 : 2;
  }
  return n;
}
