/**
 * The control channel: one WebSocket per node, dialled out by the node (so it
 * works behind NAT), carrying JSON text frames (channel.ts: the in-process
 * transport of a node inside the coordinator's process). The first frame each way is a
 * handshake with the protocol version; a major mismatch is refused with a reason.
 * Unknown extra fields are tolerated; missing required ones are rejected.
 */
import { z } from "zod";
import { addressSchema, workReceiptWireSchema } from "./ledger.js";
import { usageSchema } from "./openai.js";

/** 2: chunks carry the token ids they stream, every job streams from the engine, jobs resume (docs/continuation.md) */
export const CONTROL_PROTOCOL_VERSION = 3;
/** Path of the control-channel WebSocket on the coordinator. */
export const CONTROL_PATH = "/v1/control";
/**
 * The WebSocket subprotocol a browser node asks for (the server answers it), alongside
 * `bearer.<session token>`: a page cannot set an Authorization header on a WebSocket.
 */
export const CONTROL_SUBPROTOCOL = "sharedllm-control";
/** WebSocket close code the coordinator uses when it refuses a node. */
export const CLOSE_REFUSED = 4001;
/**
 * The largest frame a node may send (bytes): the largest real ones, an audit's scores (256
 * positions of 100 rounded log-probabilities) and a token's event with its logprobs, are a
 * fraction of it. A larger one closes the channel (WebSocket 1009, "Max payload size exceeded").
 */
export const MAX_NODE_FRAME_BYTES = 1024 * 1024;

/** The largest context a node may report: larger figures are lies or mistakes. */
export const MAX_CONTEXT_SIZE = 1 << 20;

/**
 * The most jobs a node may say it runs at once. llama-server divides its context among its slots
 * (64 slots of a 131,072-token context leave 2,048 each); a larger figure would only let a node
 * that lies draw and hold more than its share of jobs (8 per slot, docs/architecture.md).
 */
export const MAX_SLOTS = 64;

/** The most models one node may announce (each a llama-server of its own), and the longest model id. */
export const MAX_SERVED_MODELS = 64;
export const MAX_MODEL_ID = 256;

export const servedModelSchema = z.looseObject({
  id: z.string().min(1).max(MAX_MODEL_ID),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** context window per slot, tokens */
  contextSize: z.number().int().positive().max(MAX_CONTEXT_SIZE),
  /** size of the GGUF file */
  sizeBytes: z
    .number()
    .int()
    .nonnegative()
    .max(2 ** 50)
    .optional(),
  /** where another node can pull it from (`default`, `hf:...`); absent for local files */
  source: z.string().optional(),
});
export type ServedModel = z.infer<typeof servedModelSchema>;

/** What a node can do; sent in hello, shown in the network view, used by the scheduler. */
export const capabilitiesSchema = z.object({
  cpuModel: z.string(),
  cores: z.number().int().positive(),
  /** CPU threads the owner lets the engine use */
  threads: z.number().int().positive(),
  memoryBytes: z.number().nonnegative(),
  gpu: z.string().nullable(),
  vramBytes: z.number().nonnegative(),
  freeDiskBytes: z.number().nonnegative(),
  engineVariant: z.string(),
  /** measured decode speed on the served model */
  tokensPerSecond: z.number().nonnegative(),
  measuredAt: z.string(),
  /** a browser node's (docs/browser-node.md): what ran the engine, and the WebGPU adapter the browser offered */
  browser: z
    .object({
      backend: z.enum(["webgpu", "wasm"]),
      crossOriginIsolated: z.boolean(),
      adapter: z
        .object({
          vendor: z.string().max(200),
          architecture: z.string().max(200),
          description: z.string().max(500),
          isFallbackAdapter: z.boolean(),
          shaderF16: z.boolean(),
          maxBufferSize: z.number().nonnegative(),
          maxStorageBufferBindingSize: z.number().nonnegative(),
        })
        .nullable(),
      /** why llama.cpp's WebGPU backend did not run, when it did not */
      webgpuUnusable: z.string().max(500).optional(),
    })
    .optional(),
});
export type Capabilities = z.infer<typeof capabilitiesSchema>;

/**
 * Why a node takes jobs or not: `resumed` (it does), paused by its owner, outside its contribution
 * schedule, draining before it leaves, or yielding to its owner (owner-first: the owner's own
 * programs need the CPU, or the machine runs on battery).
 */
export const availabilityReasonSchema = z.enum(["resumed", "paused", "schedule", "draining", "owner_busy", "on_battery"]);
export type AvailabilityReason = z.infer<typeof availabilityReasonSchema>;

/** node -> coordinator, first frame */
export const helloSchema = z.looseObject({
  type: z.literal("hello"),
  protocol: z.number().int(),
  nodeId: z.string().min(1).max(128),
  engine: z.looseObject({ tag: z.string().max(100), variant: z.string().max(100) }),
  models: z.array(servedModelSchema).max(MAX_SERVED_MODELS),
  /** how many jobs the node runs at once */
  slots: z.number().int().positive().max(MAX_SLOTS),
  /** false when the node starts paused or outside its schedule; default true */
  accepting: z.boolean().optional(),
  /** why it does not take jobs, when `accepting` is false */
  reason: availabilityReasonSchema.optional(),
  capabilities: capabilitiesSchema.optional(),
  /** solo (default): serves its models; worker: lends its rpc-server to cluster heads; head: serves a split model */
  role: z.enum(["solo", "worker", "head"]).optional(),
  /** a worker's tunnel: its port (on the address it dials from), TLS, and a relative compute score */
  tunnel: z.object({ port: z.number().int().min(1).max(65_535), tls: z.boolean(), speed: z.number().positive() }).optional(),
  /** the node offers to audit other nodes' jobs (docs/verification.md); the coordinator uses it only if it trusts this node */
  auditor: z.boolean().optional(),
});
export type Hello = z.infer<typeof helloSchema>;

/** coordinator -> node, answer to hello */
export const welcomeSchema = z.object({
  type: z.literal("welcome"),
  protocol: z.number().int(),
  nodeId: z.string().min(1),
  /** how often the node must send a heartbeat; three missed ones mark it offline */
  heartbeatIntervalMs: z.number().int().positive(),
});
export type Welcome = z.infer<typeof welcomeSchema>;

/** The default heartbeat period; a node silent for three periods is offline. */
export const HEARTBEAT_INTERVAL_MS = 5_000;
export const MISSED_HEARTBEATS_OFFLINE = 3;

/** node -> coordinator, every heartbeat interval: how the node is doing */
export const heartbeatSchema = z.object({
  type: z.literal("heartbeat"),
  /** 1-minute load average per core */
  load: z.number().nonnegative(),
  freeMemoryBytes: z.number().int().nonnegative(),
  activeJobs: z.number().int().nonnegative(),
  loadedModels: z.array(z.string().max(MAX_MODEL_ID)).max(MAX_SERVED_MODELS),
  /** decode speed over the recent jobs, tokens per second (0 when idle) */
  tokensPerSecond: z.number().nonnegative(),
});
export type Heartbeat = z.infer<typeof heartbeatSchema>;

/** A token id of a model's vocabulary. */
const tokenIdSchema = z
  .number()
  .int()
  .nonnegative()
  .max(2 ** 31);

/** The most output a resumed job carries on: token ids, and characters of text. */
export const MAX_RESUME_TOKENS = 1 << 20;
export const MAX_RESUME_TEXT = 1 << 22;

/** coordinator -> node: run a job. `request` is what the engine runs: allow-listed fields of the OpenAI body, with the generation limit set (engineRequest). */
export const jobStartSchema = z.object({
  type: z.literal("job.start"),
  jobId: z.string().min(1),
  kind: z.enum(["chat", "completion"]),
  stream: z.boolean(),
  /** whether the client asked for the usage chunk at the end of the stream */
  includeUsage: z.boolean(),
  request: z.record(z.string(), z.unknown()),
  /**
   * A job continued from another unit that failed mid-job (docs/continuation.md): the engine
   * runs the prompt followed by the output so far (token ids, then any text whose ids are not
   * known), and generates the rest. `request` then carries the remaining generation limit.
   */
  resume: z
    .object({
      tokens: z.array(tokenIdSchema).max(MAX_RESUME_TOKENS),
      text: z.string().max(MAX_RESUME_TEXT),
    })
    .optional(),
});
export type JobStart = z.infer<typeof jobStartSchema>;

/** The most positions one audit scores, and the widest ranking an auditor reports at each. */
export const MAX_AUDIT_POSITIONS = 256;
export const MAX_AUDIT_TOP_K = 100;

/**
 * coordinator -> auditor: score another node's claimed output of a job (docs/verification.md).
 * The auditor runs `request` (the job's engine request, as the serving node got it) up to each of
 * `positions` of the `claimed` token ids, and reports how its own model ranks the claimed token
 * there. Only a node the coordinator trusts for auditing gets these.
 */
export const auditStartSchema = z.object({
  type: z.literal("audit.start"),
  auditId: z.string().min(1).max(128),
  kind: z.enum(["chat", "completion"]),
  request: z.record(z.string(), z.unknown()),
  claimed: z.array(tokenIdSchema).max(MAX_RESUME_TOKENS),
  /** indices into `claimed`, ascending, each below its length */
  positions: z.array(z.number().int().nonnegative()).max(MAX_AUDIT_POSITIONS),
  topK: z.number().int().min(1).max(MAX_AUDIT_TOP_K),
  /**
   * the GGUF file the audited node served (its sha256): an auditor scores only with the same file,
   * whatever id it serves it under; absent: the one it serves as `request.model`
   */
  sha256: z
    .string()
    .regex(/^[0-9a-f]{64}$/)
    .optional(),
});
export type AuditStart = z.infer<typeof auditStartSchema>;

/** coordinator -> auditor: the audit is no longer wanted (it is not answered) */
export const auditCancelSchema = z.object({ type: z.literal("audit.cancel"), auditId: z.string() });
export type AuditCancel = z.infer<typeof auditCancelSchema>;

/** coordinator -> node: the client went away or the job was abandoned */
export const jobCancelSchema = z.object({ type: z.literal("job.cancel"), jobId: z.string() });
export type JobCancel = z.infer<typeof jobCancelSchema>;

/** coordinator -> node: refusal or protocol error; the socket closes after it */
export const controlErrorSchema = z.object({ type: z.literal("error"), message: z.string() });
export type ControlErrorFrame = z.infer<typeof controlErrorSchema>;

/** coordinator -> node: pull this model and serve it too (it is in demand and no node serves it) */
export const modelLoadSchema = z.object({
  type: z.literal("model.load"),
  model: z.string().min(1),
  source: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
});
export type ModelLoad = z.infer<typeof modelLoadSchema>;

/**
 * coordinator -> node: a paid job ended; sign this WorkReceipt (EIP-712, under `domain`) if it
 * matches what the node served, and send it back as a `receipt` frame.
 */
export const receiptRequestSchema = z.object({
  type: z.literal("receipt.request"),
  /** the coordinator's job id (the receipt carries its keccak256) */
  jobId: z.string(),
  receipt: workReceiptWireSchema,
  domain: z.object({ chainId: z.number().int().positive(), verifyingContract: addressSchema }),
  /** set when a cluster head ran the job and this node served some of its layers */
  via: z.string().optional(),
});
export type ReceiptRequest = z.infer<typeof receiptRequestSchema>;

/**
 * coordinator -> worker: this head may dial your tunnel for this session, until `expiresAt`; answer
 * `tunnel.ready`. No key travels: the tunnel authenticates both ends by their own node keys, and
 * the worker still serves only a head its own site policy allows.
 */
export const tunnelSessionSchema = z.object({
  type: z.literal("tunnel.session"),
  sessionId: z.string(),
  head: z.string(),
  /** unix ms, at most a day ahead */
  expiresAt: z.number().int().positive(),
});
export type TunnelSessionFrame = z.infer<typeof tunnelSessionSchema>;

/** coordinator -> head: the members of the cluster it asked for, where their tunnels are, and who is missing */
export const clusterMembersSchema = z.object({
  type: z.literal("cluster.members"),
  sessionId: z.string(),
  members: z.array(
    z.object({
      nodeId: z.string(),
      host: z.string(),
      port: z.number().int().min(1).max(65_535),
      tls: z.boolean(),
      freeMemoryBytes: z.number().nonnegative(),
      speed: z.number().nonnegative(),
    }),
  ),
  missing: z.array(z.object({ nodeId: z.string(), reason: z.string() })),
  /** when the session ends (the head's request, capped by the coordinator) */
  expiresAt: z.number().int().positive().optional(),
  /** set when the coordinator would not form the cluster at all, with why */
  refused: z.string().optional(),
});
export type ClusterMembers = z.infer<typeof clusterMembersSchema>;

/** Every coordinator frame; a node acts on none that does not parse. */
export const coordinatorFrameSchema = z.discriminatedUnion("type", [
  welcomeSchema,
  jobStartSchema,
  jobCancelSchema,
  modelLoadSchema,
  receiptRequestSchema,
  tunnelSessionSchema,
  clusterMembersSchema,
  controlErrorSchema,
  auditStartSchema,
  auditCancelSchema,
]);
export type CoordinatorFrame = z.infer<typeof coordinatorFrameSchema>;

/**
 * node -> coordinator: one server-sent event's data, to relay verbatim, with the tokens it
 * streams: their ids when the engine told them all, else only how many (an engine holds back
 * text, e.g. half a UTF-8 character, and reports one id per event). This is the hot path (one
 * frame per token), so it skips JSON: a text frame `\u0001<jobId>\t<tokens>\n<data>`, where
 * `<tokens>` is comma-separated ids or `~<count>`.
 */
export interface JobChunk {
  type: "job.chunk";
  jobId: string;
  data: string;
  /** the ids of the tokens this event streams, or their count when not all ids are known */
  tokens: readonly number[] | number;
}

const CHUNK_MARK = "\u0001";
/** The most tokens one event may stream. */
export const MAX_TOKENS_PER_CHUNK = 4096;

export function encodeChunkFrame(jobId: string, data: string, tokens: readonly number[] | number): string {
  return `${CHUNK_MARK}${jobId}\t${typeof tokens === "number" ? `~${tokens}` : tokens.join(",")}\n${data}`;
}

/** The chunk in a frame; undefined when the frame is not a chunk frame, its token field is malformed or its data spans lines. */
export function decodeChunkFrame(frame: string): Omit<JobChunk, "type"> | undefined {
  if (frame[0] !== CHUNK_MARK) return undefined;
  const nl = frame.indexOf("\n");
  const tab = frame.indexOf("\t");
  if (nl < 0 || tab < 0 || tab > nl) return undefined;
  let tokens: number[] | number | undefined = tokenIds(frame, tab + 1, nl);
  if (tokens === undefined) {
    // a count, or ids written otherwise than plain digits: read as Number reads them
    const field = frame.slice(tab + 1, nl);
    if (field[0] === "~") {
      tokens = /^~\d{1,4}$/.test(field) ? Number(field.slice(1)) : Number.NaN;
      if (!(tokens <= MAX_TOKENS_PER_CHUNK)) return undefined;
    } else {
      tokens = field === "" ? [] : field.split(",").map(Number);
      if (tokens.length > MAX_TOKENS_PER_CHUNK || tokens.some((t) => !Number.isInteger(t) || t < 0 || t >= 2 ** 31)) return undefined;
    }
  }
  // an event's data is one line (JSON has none in it): a line break would inject events into the client's stream
  if (frame.indexOf("\n", nl + 1) >= 0 || frame.indexOf("\r", nl + 1) >= 0) return undefined;
  return { jobId: frame.slice(1, tab), data: frame.slice(nl + 1), tokens };
}

/**
 * The ids of a token field of plain decimal ids (`12,345`), read in place (the hot path: no
 * strings or arrays but the result); undefined for any other field, which decodeChunkFrame reads
 * the general way, or for an id of 2^31 or more or more than MAX_TOKENS_PER_CHUNK ids (refused
 * there too).
 */
function tokenIds(frame: string, from: number, to: number): number[] | undefined {
  if (from === to) return undefined;
  const ids: number[] = [];
  let id = 0;
  let digits = 0;
  for (let i = from; i < to; i++) {
    const c = frame.charCodeAt(i);
    if (c >= 48 && c <= 57) {
      id = id * 10 + (c - 48);
      digits++;
    } else if (c === 44 && digits > 0) {
      if (id >= 2 ** 31) return undefined;
      ids.push(id);
      id = 0;
      digits = 0;
    } else return undefined;
  }
  if (digits === 0 || id >= 2 ** 31) return undefined;
  ids.push(id);
  return ids.length <= MAX_TOKENS_PER_CHUNK ? ids : undefined;
}

/**
 * node -> coordinator: a job's stream finished; usage as metered by the engine. A resumed job's
 * prompt tokens include the `resumed` tokens of earlier output it was given again.
 */
export const jobEndSchema = z.object({
  type: z.literal("job.end"),
  jobId: z.string(),
  usage: usageSchema,
  resumed: z
    .number()
    .int()
    .nonnegative()
    .max(1 << 30)
    .optional(),
});
/**
 * node -> coordinator: the prompt tokens the engine took for the job (cached ones included; a
 * resumed job's, the output it was given again too), once, as its output begins: a client that
 * leaves mid-stream is charged for its prompt by this count, within the coordinator's bound.
 */
export const jobPromptSchema = z.object({
  type: z.literal("job.prompt"),
  jobId: z.string(),
  promptTokens: z
    .number()
    .int()
    .nonnegative()
    .max(2 ** 31 - 1),
});
/** node -> coordinator: the job failed on the node */
export const jobErrorSchema = z.object({
  type: z.literal("job.error"),
  jobId: z.string(),
  message: z.string(),
  /** true when the engine failed before producing anything, so another node may retry */
  retryable: z.boolean(),
  /** set when the engine itself rejected the request (e.g. prompt longer than the context) */
  status: z.number().int().optional(),
});

/**
 * node -> coordinator: whether the node takes new jobs. Jobs in flight finish, unless `handOff`:
 * then the node has given them up (it yields to its owner) and the coordinator fails each of them
 * as retryable, to be continued elsewhere.
 */
export const availabilitySchema = z.object({
  type: z.literal("availability"),
  accepting: z.boolean(),
  reason: availabilityReasonSchema,
  handOff: z.boolean().optional(),
});
export type Availability = z.infer<typeof availabilitySchema>;

/** node -> coordinator: the models the node serves now (after a model.load), and a failed load if any */
export const modelsSchema = z.object({
  type: z.literal("models"),
  models: z.array(servedModelSchema).max(MAX_SERVED_MODELS),
  failed: z.object({ model: z.string(), message: z.string() }).optional(),
  /** capabilities measured after the hello (a head measures once its cluster serves) */
  capabilities: capabilitiesSchema.optional(),
});

/** node -> coordinator: a signed WorkReceipt, or the reason the node will not sign the one proposed */
export const receiptSchema = z.object({
  type: z.literal("receipt"),
  receipt: workReceiptWireSchema,
  signature: z
    .string()
    .regex(/^0x[0-9a-fA-F]+$/)
    .nullable(),
  refused: z.string().max(500).optional(),
});
export type ReceiptFrame = z.infer<typeof receiptSchema>;

/** A cluster session's id, as its head names it: letters, digits, `-` and `_` (it appears in signed text). */
const clusterSessionIdSchema = z.string().regex(/^[\w-]{8,64}$/, "must be 8 to 64 letters, digits, - or _");

/** head -> coordinator: form a cluster session with these workers (the coordinator tells each which head may dial it) */
export const clusterFormSchema = z.object({
  type: z.literal("cluster.form"),
  sessionId: clusterSessionIdSchema,
  members: z.array(z.string()).min(1).max(64),
  expiresAt: z.number().int().positive(),
});

/** worker -> coordinator: the session is in place; the head may dial */
export const tunnelReadySchema = z.object({ type: z.literal("tunnel.ready"), sessionId: z.string() });

/** head -> coordinator: the layer split now served (for the network view and for paying every member) */
export const clusterPlanSchema = z.object({
  type: z.literal("cluster.plan"),
  members: z.array(
    z.object({
      nodeId: z.string(),
      firstLayer: z.number().int().nonnegative(),
      layerCount: z.number().int().positive(),
      shareBps: z.number().int().min(0).max(10_000),
      /** what the head measured: the member's compute score, link round trip and throughput */
      speed: z.number().nonnegative().optional(),
      rttMs: z.number().nonnegative().optional(),
      throughputMiBps: z.number().nonnegative().optional(),
    }),
  ),
});
export type ClusterPlan = z.infer<typeof clusterPlanSchema>;

/** A member of a split the coordinator confirmed: the head's plan for it, and the weight bytes its own report counted. */
export type ConfirmedMember = ClusterPlan["members"][number] & { tensorBytes: number };

/** The highest layer count a report may name (llama.cpp allows 512 layers). */
const MAX_REPORTED_LAYERS = 1 << 20;

/**
 * worker -> coordinator: the layers the head of one of its sessions placed on it, as the worker's
 * tunnel end saw them in the RPC stream: `layerCount` layers from `firstLayer` (`contiguous` false
 * when some between them were not seen: no plan matches that), and the bytes of their weights.
 * Signed by the worker's node key (EIP-191) over clusterLayersMessage, so the report is evidence
 * that anyone can check. The coordinator believes a head's split only when every member's own
 * report matches it (docs/security/cluster.md).
 */
export const clusterLayersSchema = z.object({
  type: z.literal("cluster.layers"),
  sessionId: clusterSessionIdSchema,
  head: addressSchema,
  firstLayer: z.number().int().nonnegative().max(MAX_REPORTED_LAYERS),
  layerCount: z.number().int().positive().max(MAX_REPORTED_LAYERS),
  contiguous: z.boolean(),
  tensorBytes: z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER),
  signature: z.string().regex(/^0x[0-9a-fA-F]{130}$/),
});
export type ClusterLayers = z.infer<typeof clusterLayersSchema>;

/** The protocol tag that opens a layer report's signed text. */
export const CLUSTER_LAYERS_TAG = "sharedllm-layers/1";

/**
 * The text a worker signs for a `cluster.layers` report: the tag, the session, its head and the
 * worker (node ids, lowercase), the layers and their weight bytes.
 *
 * @example
 * sharedllm-layers/1
 * session 1f0e...-9c2d head 0xab...01 worker 0xcd...02
 * layers 0+20 contiguous tensor-bytes 61341696
 */
export function clusterLayersMessage(r: {
  sessionId: string;
  head: string;
  worker: string;
  firstLayer: number;
  layerCount: number;
  contiguous: boolean;
  tensorBytes: number;
}): string {
  return [
    CLUSTER_LAYERS_TAG,
    `session ${r.sessionId} head ${r.head.toLowerCase()} worker ${r.worker.toLowerCase()}`,
    `layers ${r.firstLayer}+${r.layerCount} ${r.contiguous ? "contiguous" : "with-gaps"} tensor-bytes ${r.tensorBytes}`,
  ].join("\n");
}

/** How the auditor's model scores one claimed token: log-probabilities of its raw distribution (temperature 1). */
export const auditScoreSchema = z.object({
  position: z.number().int().nonnegative(),
  /** the claimed token's rank (1: the auditor's top choice); null when it is not among the top `topK` */
  rank: z.number().int().min(1).nullable(),
  /** the claimed token's log-probability, when ranked */
  logprob: z.number().max(0).nullable(),
  /** the auditor's top token there, and its log-probability */
  top: tokenIdSchema,
  topLogprob: z.number().max(0),
  /** the log-probability of the `topK`-th token: an unranked claimed token's is at most this */
  floorLogprob: z.number().max(0),
  /**
   * the top `topK` log-probabilities, best first (rounded to 1e-4): the distribution a sampled
   * job's claimed tokens are weighed against (how likely its own sampling makes them)
   */
  topLogprobs: z.array(z.number().max(0)).max(MAX_AUDIT_TOP_K).optional(),
});
export type AuditScore = z.infer<typeof auditScoreSchema>;

/**
 * auditor -> coordinator: the scores of an `audit.start`, one per position, and the prompt's token
 * count by the auditor's own count. A claimed token outside the model's vocabulary scores as
 * unranked and ends the scores: no later position can be scored.
 */
export const auditResultSchema = z.object({
  type: z.literal("audit.result"),
  auditId: z.string(),
  promptTokens: z.number().int().nonnegative().max(MAX_CONTEXT_SIZE),
  scores: z.array(auditScoreSchema).max(MAX_AUDIT_POSITIONS),
});
export type AuditResult = z.infer<typeof auditResultSchema>;

/** auditor -> coordinator: the audit could not run (the auditor's fault or the engine's, never the audited node's) */
export const auditErrorSchema = z.object({ type: z.literal("audit.error"), auditId: z.string(), message: z.string() });
export type AuditError = z.infer<typeof auditErrorSchema>;

/** node -> coordinator: the node leaves the site for good; its sessions end */
export const leaveSchema = z.object({ type: z.literal("leave") });

/** Every node frame but chunks (see encodeChunkFrame). */
export const nodeFrameSchema = z.discriminatedUnion("type", [
  helloSchema,
  heartbeatSchema,
  availabilitySchema,
  modelsSchema,
  leaveSchema,
  receiptSchema,
  clusterFormSchema,
  tunnelReadySchema,
  clusterPlanSchema,
  clusterLayersSchema,
  jobEndSchema,
  jobPromptSchema,
  jobErrorSchema,
  auditResultSchema,
  auditErrorSchema,
]);
export type NodeFrame = z.infer<typeof nodeFrameSchema> | JobChunk;
export type JobEnd = z.infer<typeof jobEndSchema>;
export type JobErrorFrame = z.infer<typeof jobErrorSchema>;

/**
 * A JSON frame checked against its direction's schema (nodeFrameSchema, coordinatorFrameSchema),
 * or why it is refused. Unknown extra fields are tolerated; missing or mistyped ones are not.
 */
export function parseFrame<T>(schema: z.ZodType<T>, text: string): { ok: true; frame: T } | { ok: false; reason: string } {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return { ok: false, reason: "frames must be JSON" };
  }
  const parsed = schema.safeParse(json);
  if (parsed.success) return { ok: true, frame: parsed.data };
  const issue = parsed.error.issues[0];
  return {
    ok: false,
    reason: `malformed frame: ${issue ? `${issue.message}${issue.path.length ? ` at ${issue.path.join(".")}` : ""}` : "invalid"}`,
  };
}
