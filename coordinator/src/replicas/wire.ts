/**
 * What replicas of one coordinator tell each other over NATS (docs/replicas.md): the subjects,
 * the fleet view each publishes of the nodes it holds, and the job messages that carry a job to
 * the replica holding its node and its stream back. Replicas are one operator's processes on one
 * database; what comes off NATS is still checked before it is used.
 */
import { createHash } from "node:crypto";
import {
  decodeChunkFrame,
  encodeChunkFrame,
  type JobStart,
  jobStartSchema,
  type NetworkNode,
  servedModelSchema,
  type Usage,
  usageSchema,
} from "@sharedllm/protocol";
import { z } from "zod";
import type { FailureCause } from "../units.js";

/** Bumped when a message changes shape: replicas of another version are ignored (and logged). */
export const REPLICA_WIRE_VERSION = 1;

/**
 * The subjects of one site's replicas. Their prefix is derived from the site's join token, which
 * every replica of the site has: sites sharing a NATS server stay apart, with nothing to set.
 */
export function replicaSubjects(joinToken: string) {
  const site = createHash("sha256").update(`sharedllm replicas\0${joinToken}`).digest("hex").slice(0, 16);
  const p = `sharedllm.${site}`;
  return {
    /** every replica's fleet view updates */
    fleet: `${p}.fleet`,
    /** a replica that starts asks the others for their whole views */
    sync: `${p}.sync`,
    /** requests to the replica holding a node: `job`, `cancel`, `frame` */
    node: (nodeId: string, verb: "job" | "cancel" | "frame") => `${p}.node.${nodeId}.${verb}`,
    /** every message for a node (the holder's subscription) */
    nodeAll: (nodeId: string) => `${p}.node.${nodeId}.*`,
    /** the streams of a replica's jobs that run on other replicas' nodes */
    stream: (replica: string) => `${p}.stream.${replica}`,
  };
}
export type ReplicaSubjects = ReturnType<typeof replicaSubjects>;

const payeesSchema = z.object({
  members: z.array(z.object({ node: z.string().regex(/^0x[0-9a-fA-F]{40}$/), shareBps: z.number().int().min(0).max(10_000) })),
  via: z.string().optional(),
});

/** How a replica sees a node it holds: what scheduling needs, who is paid, and its /v1/network entry. */
export const remoteStateSchema = z.object({
  id: z.string().regex(/^0x[0-9a-f]{40}$/),
  models: z.array(servedModelSchema),
  slots: z.number().int().positive(),
  active: z.number().int().nonnegative(),
  accepting: z.boolean(),
  coolingUntil: z.number(),
  notLoaded: z.array(z.string()).optional(),
  tokensPerSecond: z.number().nonnegative(),
  suspicion: z.number().nonnegative(),
  incarnation: z.number().int().nonnegative(),
  payees: payeesSchema,
  /** shown as is in /v1/network */
  network: z.custom<NetworkNode>((v) => typeof v === "object" && v !== null),
});
export type RemoteState = z.infer<typeof remoteStateSchema>;

/**
 * A fleet view update: the nodes the sender holds now (all of them at each heartbeat period, in
 * pages; between, those that changed) and those it no longer holds. `bye`: the sender stops.
 */
export const fleetUpdateSchema = z.object({
  v: z.literal(REPLICA_WIRE_VERSION),
  replica: z.string().min(1).max(64),
  nodes: z.array(remoteStateSchema),
  gone: z.array(z.string()),
  bye: z.boolean().optional(),
});
export type FleetUpdate = z.infer<typeof fleetUpdateSchema>;

/** A job handed to the replica holding its node; the stream goes to `replica`'s stream subject. */
export const jobRequestSchema = z.object({ replica: z.string().min(1).max(64), start: jobStartSchema });
export type JobRequest = { replica: string; start: JobStart };
export type JobReply = { ok: true } | { ok: false; message: string };

/** The client of a job run elsewhere went away: what it is charged for goes with the cancel. */
export const jobCancelSchema = z.object({
  jobId: z.string(),
  sent: z.object({ tokens: z.number().int().nonnegative(), promptTokens: z.number().int().nonnegative() }).optional(),
});

const FAILURE_CAUSES = ["node_lost", "engine", "owner", "stalled"] as const satisfies readonly FailureCause[];

/** One line of a stream back that is not a chunk: the job's prompt, its end, or its error. */
const streamEventSchema = z.discriminatedUnion("e", [
  z.object({ e: z.literal("prompt"), j: z.string(), n: z.number().int().nonnegative() }),
  z.object({ e: z.literal("end"), j: z.string(), usage: usageSchema, resumed: z.number().int().nonnegative().optional() }),
  /** the jobs for the receiving replica that the sender's nodes run now (every few seconds while there are any) */
  z.object({ e: z.literal("running"), jobs: z.array(z.string()).max(100_000) }),
  z.object({
    e: z.literal("error"),
    j: z.string(),
    message: z.string(),
    retryable: z.boolean(),
    status: z.number().int().optional(),
    cause: z.enum(FAILURE_CAUSES).optional(),
  }),
]);
export type StreamEvent = z.infer<typeof streamEventSchema>;

/**
 * A stream back is lines: a chunk is the control channel's chunk frame (a header line, then its
 * data line, which never holds a line break), anything else one line of JSON. Several jobs'
 * events that come within one turn of the event loop go in one message.
 */
export function encodeStreamChunk(jobId: string, data: string, tokens: readonly number[] | number): string {
  return encodeChunkFrame(jobId, data, tokens);
}

export function encodeStreamEvent(event: StreamEvent): string {
  return JSON.stringify(event);
}

/** Where the events of a stream message go, by job id (as a node's frames go to its ConnectedNode). */
export interface StreamTarget {
  /** the jobs for this replica the sender runs now */
  running(jobs: readonly string[]): void;
  chunk(jobId: string, data: string, tokens: readonly number[] | number): void;
  prompted(jobId: string, promptTokens: number): void;
  end(jobId: string, usage: Usage, resumed?: number): void;
  error(jobId: string, e: { message: string; retryable: boolean; status?: number; cause?: FailureCause }): void;
}

/** Hands each event of a stream message to `target`; returns how many lines it could not read. */
export function decodeStream(text: string, target: StreamTarget): number {
  let bad = 0;
  let at = 0;
  while (at < text.length) {
    let end = text.indexOf("\n", at);
    if (end < 0) end = text.length;
    if (text.charCodeAt(at) === 1) {
      // a chunk: its header line and its data line
      let dataEnd = text.indexOf("\n", end + 1);
      if (dataEnd < 0) dataEnd = text.length;
      const chunk = decodeChunkFrame(text.slice(at, dataEnd));
      if (chunk) target.chunk(chunk.jobId, chunk.data, chunk.tokens);
      else bad++;
      at = dataEnd + 1;
      continue;
    }
    const event = parseEvent(text.slice(at, end));
    at = end + 1;
    if (!event) bad++;
    else if (event.e === "running") target.running(event.jobs);
    else if (event.e === "prompt") target.prompted(event.j, event.n);
    else if (event.e === "end") target.end(event.j, event.usage, event.resumed);
    else target.error(event.j, { message: event.message, retryable: event.retryable, status: event.status, cause: event.cause });
  }
  return bad;
}

function parseEvent(line: string): StreamEvent | undefined {
  try {
    const r = streamEventSchema.safeParse(JSON.parse(line));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}
