/**
 * OpenAI-compatible request shapes accepted by the coordinator. Known fields are
 * checked; unknown ones pass through untouched to llama-server, which supports many
 * sampling extensions (top_k, min_p, repeat_penalty, ...).
 */
import { z } from "zod";

/** Above this a max_tokens value is a mistake, not a request. */
export const MAX_TOKENS_LIMIT = 131_072;

const maxTokens = z
  .number({ error: "must be a number" })
  .int("must be an integer")
  .min(1, "must be at least 1")
  .max(MAX_TOKENS_LIMIT, `must be at most ${MAX_TOKENS_LIMIT}`);

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
});

export const completionRequestSchema = z.looseObject({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).length(1, "only one prompt per request is supported")], {
    error: "is required and must be a string",
  }),
});

export type ChatCompletionRequest = z.infer<typeof chatCompletionRequestSchema>;
export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** The two generation endpoints a node serves. */
export type JobKind = "chat" | "completion";

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
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
