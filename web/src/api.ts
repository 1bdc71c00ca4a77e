/**
 * The coordinator's HTTP API as the portal uses it: same origin, JSON in and out. A failure is
 * the coordinator's own error (protocol's ApiError, from its OpenAI-shaped body); a request that
 * cannot reach the coordinator at all fails with UNREACHABLE. The shapes of the bodies are
 * protocol's (responses.ts).
 */
import { ApiError, SseDecoder, type Usage } from "@sharedllm/protocol";

export const UNREACHABLE = "Cannot reach the coordinator. Check that it is running, then try again.";

export async function api<T>(path: string, o: { method?: string; body?: unknown; token?: string } = {}): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, {
      method: o.method ?? (o.body === undefined ? "GET" : "POST"),
      headers: {
        ...(o.token ? { authorization: `Bearer ${o.token}` } : {}),
        ...(o.body === undefined ? {} : { "content-type": "application/json" }),
      },
      body: o.body === undefined ? undefined : JSON.stringify(o.body),
    });
  } catch {
    throw new Error(UNREACHABLE);
  }
  if (!res.ok) throw await failure(res);
  return (await res.json().catch(() => undefined)) as T;
}

/** The coordinator's error in a failed response, or one that says what came back instead. */
async function failure(res: Response): Promise<ApiError> {
  const body: unknown = await res.json().catch(() => undefined);
  return ApiError.fromBody(body) ?? new ApiError("internal_error", `The coordinator answered HTTP ${res.status}`);
}

/** Streams a chat completion (OpenAI SSE) with an API key; calls onText per delta; returns the usage. */
export async function streamChat(
  o: { key: string; model: string; messages: { role: string; content: string }[]; signal?: AbortSignal },
  onText: (text: string) => void,
): Promise<Usage | undefined> {
  let res: Response;
  try {
    res = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { authorization: `Bearer ${o.key}`, "content-type": "application/json" },
      body: JSON.stringify({
        model: o.model,
        messages: o.messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: 256,
      }),
      signal: o.signal,
    });
  } catch (err) {
    if ((err as Error).name === "AbortError") throw err;
    throw new Error(UNREACHABLE);
  }
  if (!res.ok) throw await failure(res);
  if (!res.body) throw new ApiError("internal_error", "The coordinator answered without a body");
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const sse = new SseDecoder();
  let usage: Usage | undefined;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    for (const data of sse.push(value)) {
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data) as {
        choices?: { delta?: { content?: string } }[];
        usage?: Usage | null;
        error?: { message?: string };
      };
      if (chunk.error) throw ApiError.fromBody(chunk) ?? new ApiError("node_failed", chunk.error.message ?? "the generation failed");
      const text = chunk.choices?.[0]?.delta?.content;
      if (text) onText(text);
      if (chunk.usage) usage = chunk.usage;
    }
  }
  return usage;
}
