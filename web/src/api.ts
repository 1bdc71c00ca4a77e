/**
 * The coordinator's HTTP API as the portal uses it: same origin, JSON in and out, OpenAI error
 * shape on failure. A request that cannot reach the coordinator at all fails with status 0.
 */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

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
    throw new ApiError(0, "unreachable", UNREACHABLE);
  }
  const json = (await res.json().catch(() => undefined)) as { error?: { message?: string; code?: string } } | undefined;
  if (!res.ok) throw new ApiError(res.status, json?.error?.code, json?.error?.message ?? `The coordinator answered HTTP ${res.status}`);
  return json as T;
}

export interface Ledger {
  chainId: number;
  ledger: `0x${string}`;
  coordinator: `0x${string}`;
  rpcUrl: string;
  pricing: { default: Price; models: Record<string, Price> };
}
export interface Price {
  prompt: string;
  completion: string;
}

export interface Account {
  address: `0x${string}`;
  deposited: string;
  pendingWithdrawal: string;
  settledSpent: string;
  charged: string;
  held: string;
  available: string;
}

export interface ApiKey {
  id: string;
  name: string;
  createdAt: string;
  revokedAt: string | null;
  usage: { requests: number; promptTokens: number; completionTokens: number; credits: string };
}

export interface Earnings {
  address: `0x${string}`;
  coordinator: `0x${string}`;
  ledger: `0x${string}`;
  earned: string;
  pending: string;
  settled: string;
  claimed: string;
  claimable: string;
  claim: { batchId: string; cumulative: string; proof: `0x${string}`[]; root: string } | null;
  byDay: { day: string; credits: string }[];
  served: { jobs: number; promptTokens: number; completionTokens: number };
}

export interface ClusterMember {
  nodeId: string;
  firstLayer: number;
  layerCount: number;
  shareBps: number;
  speed?: number;
  rttMs?: number;
  throughputMiBps?: number;
}

export interface NetworkNode {
  id: string;
  status: "online" | "offline";
  accepting: boolean;
  models: string[];
  slots: number;
  activeJobs: number;
  load: number | null;
  tokensPerSecond: number | null;
  role: "solo" | "head" | "worker";
  cluster: ClusterMember[] | null;
  capabilities: { cpuModel?: string; cores?: number; memoryBytes?: number } | null;
  lastSeenAt: string;
}

export interface Network {
  nodes: NetworkNode[];
  models: { id: string; nodes: number }[];
  totals: { online: number; offline: number; activeJobs: number };
}

/** Streams a chat completion (OpenAI SSE) with an API key; calls onText per delta; returns the usage. */
export async function streamChat(
  o: { key: string; model: string; messages: { role: string; content: string }[]; signal?: AbortSignal },
  onText: (text: string) => void,
): Promise<{ prompt_tokens: number; completion_tokens: number } | undefined> {
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
    throw new ApiError(0, "unreachable", UNREACHABLE);
  }
  if (!res.ok || !res.body) {
    const json = (await res.json().catch(() => undefined)) as { error?: { message?: string; code?: string } } | undefined;
    throw new ApiError(res.status, json?.error?.code, json?.error?.message ?? `The coordinator answered HTTP ${res.status}`);
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let usage: { prompt_tokens: number; completion_tokens: number } | undefined;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    let end = buffered.indexOf("\n\n");
    while (end >= 0) {
      const event = buffered.slice(0, end);
      buffered = buffered.slice(end + 2);
      end = buffered.indexOf("\n\n");
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trim())
        .join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data) as {
        choices?: { delta?: { content?: string } }[];
        usage?: { prompt_tokens: number; completion_tokens: number };
        error?: { message?: string; code?: string };
      };
      if (chunk.error) throw new ApiError(500, chunk.error.code, chunk.error.message ?? "the generation failed");
      const text = chunk.choices?.[0]?.delta?.content;
      if (text) onText(text);
      if (chunk.usage) usage = chunk.usage;
    }
  }
  return usage;
}
