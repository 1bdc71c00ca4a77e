/**
 * OpenAI-compatible request shapes accepted by the coordinator. Known fields are
 * checked; unknown ones are tolerated but never reach a node: the engine is sent
 * only the fields on an allow-list (`engineRequest`), with the generation limit
 * the coordinator reserved credits for. llama-server reads many extensions of its
 * own (`n_predict`, `n_cmpl`, `id_slot`, ...) that would change what a job costs
 * or whose cache it uses; only pure sampling extensions pass.
 */
import { z } from "zod";

/** Above this a max_tokens value is a mistake, not a request. */
export const MAX_TOKENS_LIMIT = 131_072;

const maxTokens = z
  .number({ error: "must be a number" })
  .int("must be an integer")
  .min(1, "must be at least 1")
  .max(MAX_TOKENS_LIMIT, `must be at most ${MAX_TOKENS_LIMIT}`);

const probability = z.number().min(0).max(1).nullish();

const common = {
  model: z.string({ error: "is required and must be a string" }).min(1, "must not be empty"),
  stream: z.boolean().optional(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullish(),
  max_tokens: maxTokens.nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  seed: z.number().int().nullish(),
  n: z.literal(1, "only n=1 is supported").nullish(),
  stop: z.union([z.string(), z.array(z.string()).max(4)]).nullish(),
  user: z.string().optional(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).nullish(),
  // llama.cpp's sampling extensions: they change which tokens are picked, never how many
  top_k: z.number().int().min(0).max(1_000).nullish(),
  min_p: probability,
  typical_p: probability,
  repeat_penalty: z.number().min(0).max(10).nullish(),
  repeat_last_n: z.number().int().min(-1).max(MAX_TOKENS_LIMIT).nullish(),
};

const contentPart = z.looseObject({ type: z.string() });

export const chatMessageSchema = z.looseObject({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), z.array(contentPart), z.null()]).optional(),
  name: z.string().optional(),
});

export const chatCompletionRequestSchema = z.looseObject({
  ...common,
  messages: z.array(chatMessageSchema, { error: "is required and must be an array" }).min(1, "must not be empty"),
  max_completion_tokens: maxTokens.nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  response_format: z.looseObject({ type: z.enum(["text", "json_object", "json_schema"]) }).nullish(),
  // only function tools: llama-server fails (500) on any other type, which must not count against the node
  tools: z
    .array(z.looseObject({ type: z.literal("function", { error: "only function tools are supported" }) }))
    .max(128)
    .nullish(),
  tool_choice: z
    .union([z.string(), z.looseObject({ type: z.literal("function", { error: "only a function tool can be chosen" }) })])
    .nullish(),
  parallel_tool_calls: z.boolean().nullish(),
});

export const completionRequestSchema = z.looseObject({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).length(1, "only one prompt per request is supported")], {
    error: "is required and must be a string",
  }),
});

export type ChatCompletionRequest = z.infer<typeof chatCompletionRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** Request fields a node's engine is sent (besides `max_tokens`, which the coordinator sets). */
const ENGINE_FIELDS = [
  "model",
  "messages",
  "prompt",
  "stream",
  "stream_options",
  "temperature",
  "top_p",
  "seed",
  "n",
  "stop",
  "presence_penalty",
  "frequency_penalty",
  "logit_bias",
  "logprobs",
  "top_logprobs",
  "response_format",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "top_k",
  "min_p",
  "typical_p",
  "repeat_penalty",
  "repeat_last_n",
] as const;

/**
 * The request a node's engine runs: only allow-listed fields of the validated request, and
 * the generation limit the job's credits were reserved for, as `max_tokens` and as
 * llama-server's own `n_predict` (which would otherwise take precedence over it).
 */
export function engineRequest(req: ChatCompletionRequest | CompletionRequest, generationLimit: number): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const src = req as Record<string, unknown>;
  for (const field of ENGINE_FIELDS) if (src[field] !== undefined && src[field] !== null) out[field] = src[field];
  out.max_tokens = generationLimit;
  out.n_predict = generationLimit;
  return out;
}

/** The two generation endpoints a node serves. */
export type JobKind = "chat" | "completion";

/** Token counts as a node reports them: whole, non-negative, and far below what any job reaches. */
export const usageSchema = z.object({
  prompt_tokens: z
    .number()
    .int()
    .nonnegative()
    .max(1 << 30),
  completion_tokens: z
    .number()
    .int()
    .nonnegative()
    .max(1 << 30),
  total_tokens: z
    .number()
    .int()
    .nonnegative()
    .max(2 ** 31),
});
export type Usage = z.infer<typeof usageSchema>;

/** Whether a request asks for log-probabilities (`logprobs: true`, or a completion's count, 0 included). */
export function asksForLogprobs(req: Record<string, unknown>): boolean {
  return req.logprobs !== undefined && req.logprobs !== null && req.logprobs !== false;
}

/** The worst-case completion length of a request, for reservations and scheduling. */
export function requestedMaxTokens(req: ChatCompletionRequest | CompletionRequest): number | undefined {
  const r = req as ChatCompletionRequest;
  return r.max_completion_tokens ?? r.max_tokens ?? undefined;
}

/** A flat `param: message` string for the first schema problem, as OpenAI reports one param at a time. */
export function describeZodError(err: z.ZodError): { message: string; param: string | null } {
  const issue = err.issues[0];
  if (!issue) return { message: "invalid request", param: null };
  const param = issue.path.length
    ? issue.path
        .map((p) => (typeof p === "number" ? `[${p}]` : String(p)))
        .join(".")
        .replace(/\.\[/g, "[")
    : null;
  return { message: param ? `${param}: ${issue.message}` : issue.message, param };
}
