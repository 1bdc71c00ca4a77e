/**
 * What a serving node claims it generated: a job run through the node's own job runner on a
 * llama-server, with the token ids its chunk frames carry (what a coordinator receives and would
 * have audited), the engine's usage, and, when asked, the engine's own log-probability of each.
 */
import { type EngineConnections, runJob } from "@sharedllm/node";
import type { JobStart, Usage } from "@sharedllm/protocol";

export interface Claimed {
  claimed: number[];
  usage: Usage;
  /** the engine's log-probability of each claimed token (with `logprobs`) */
  own: number[];
}

export async function runClaim(
  connections: EngineConnections,
  kind: "chat" | "completion",
  request: Record<string, unknown>,
  o: { logprobs?: boolean } = {},
): Promise<Claimed> {
  const job: JobStart = {
    type: "job.start",
    jobId: `claim-${Math.random().toString(36).slice(2)}`,
    kind,
    stream: true,
    includeUsage: false,
    request: { ...request, ...(o.logprobs && (kind === "chat" ? { logprobs: true, top_logprobs: 1 } : { logprobs: 1 })) },
  };
  const claimed: number[] = [];
  const own: number[] = [];
  let usage: Usage | undefined;
  let failure: string | undefined;
  await runJob(
    job,
    connections,
    (f) => {
      if (f.type === "job.error") failure = f.message;
      if (f.type === "job.end") usage = f.usage;
      if (f.type !== "job.chunk") return;
      // a chunk that streams tokens without their ids: the coordinator could not audit this job
      if (typeof f.tokens === "number") failure = "a chunk without its token ids";
      else claimed.push(...f.tokens);
      if (!o.logprobs) return;
      const event = JSON.parse(f.data) as { choices?: { logprobs?: { content?: { logprob?: number }[] } | null }[] };
      for (const c of event.choices?.[0]?.logprobs?.content ?? []) own.push(c.logprob ?? Number.NaN);
    },
    new AbortController().signal,
  );
  if (failure || !usage) throw new Error(`the job failed: ${failure ?? "no usage"}`);
  return { claimed, usage, own };
}
