/**
 * Playground: a streaming chat through the real OpenAI-compatible API with one of the user's keys
 * (a "playground" key made for this browser, or one pasted in), spending the user's credits.
 */
import { ApiError, type LedgerResponse } from "@sharedllm/protocol";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { type FormEvent, useEffect, useRef, useState } from "react";
import { api, streamChat } from "../api.js";
import { useSession } from "../session.js";
import { Alert } from "../ui.js";
import { credits } from "../wallet.js";
import { useAccountBalance } from "./Credits.js";
import { useCreateKey } from "./Keys.js";

interface Message {
  role: "user" | "assistant";
  content: string;
}

const keyStorage = (owner: string | undefined) => `sharedllm.playgroundKey.${owner?.toLowerCase() ?? "anonymous"}`;

export function PlaygroundPage({ ledger }: { ledger?: LedgerResponse }) {
  const session = useSession();
  const owner = session?.session?.address;
  const [key, setKey] = useState(() => localStorage.getItem(keyStorage(owner)) ?? "");
  useEffect(() => setKey(localStorage.getItem(keyStorage(owner)) ?? ""), [owner]);
  const models = useQuery({
    queryKey: ["models", key],
    queryFn: () => api<{ data: { id: string }[] }>("/v1/models", { token: key }).then((r) => r.data.map((m) => m.id)),
    enabled: !!key,
  });
  const [model, setModel] = useState("");
  useEffect(() => {
    if (!model && models.data?.[0]) setModel(models.data[0]);
  }, [models.data, model]);
  const [messages, setMessages] = useState<Message[]>([]);
  const [input, setInput] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string>();
  const [cost, setCost] = useState<{ prompt: number; completion: number; credits: bigint }>();
  const abort = useRef<AbortController>(undefined);
  const balance = useAccountBalance();
  const queries = useQueryClient();
  const create = useCreateKey();

  const chooseKey = (k: string) => {
    localStorage.setItem(keyStorage(owner), k);
    setKey(k);
  };
  const send = async (e: FormEvent) => {
    e.preventDefault();
    const text = input.trim();
    if (!text || !key || !model) return;
    const history: Message[] = [...messages, { role: "user", content: text }];
    setMessages([...history, { role: "assistant", content: "" }]);
    setInput("");
    setBusy(true);
    setError(undefined);
    setCost(undefined);
    abort.current = new AbortController();
    try {
      const usage = await streamChat({ key, model, messages: history, signal: abort.current.signal }, (delta) =>
        setMessages((ms) => {
          const last = ms[ms.length - 1] as Message;
          return [...ms.slice(0, -1), { ...last, content: last.content + delta }];
        }),
      );
      if (usage && ledger) {
        const price = ledger.pricing.models[model] ?? ledger.pricing.default;
        const charged = BigInt(usage.prompt_tokens) * BigInt(price.prompt) + BigInt(usage.completion_tokens) * BigInt(price.completion);
        setCost({ prompt: usage.prompt_tokens, completion: usage.completion_tokens, credits: charged });
      }
    } catch (err) {
      if ((err as Error).name !== "AbortError") {
        const status = err instanceof ApiError ? err.status : 0;
        setError(
          status === 402 ? `Not enough credits: ${(err as Error).message} Buy credits on the Credits page.` : (err as Error).message,
        );
        // the reply that never came is not part of the conversation
        setMessages((ms) => (ms[ms.length - 1]?.content ? ms : ms.slice(0, -1)));
      }
    } finally {
      setBusy(false);
      // (an invalidation, not a refetch: it leaves alone a balance nobody is signed in for)
      queries.invalidateQueries({ queryKey: ["account"] });
    }
  };

  return (
    <>
      <section className="card" aria-labelledby="setup-h">
        <h2 id="setup-h">Key and model</h2>
        {key ? (
          <p>
            Using key <code>{key.slice(0, 8)}…</code>{" "}
            <button type="button" onClick={() => chooseKey("")}>
              Use another key
            </button>
          </p>
        ) : (
          <div className="row">
            {session?.session && (
              <button
                type="button"
                className="primary"
                disabled={create.isPending}
                onClick={() => create.mutate("playground", { onSuccess: (r) => chooseKey(r.key) })}
              >
                Create a playground key
              </button>
            )}
            <form
              className="row"
              onSubmit={(e) => {
                e.preventDefault();
                const k = new FormData(e.currentTarget).get("key");
                if (typeof k === "string" && k.trim()) chooseKey(k.trim());
              }}
            >
              <label>
                API key
                <input name="key" type="password" placeholder="sk-…" autoComplete="off" />
              </label>
              <button type="submit">Use key</button>
            </form>
          </div>
        )}
        <Alert error={create.error} />
        <Alert error={models.error} />
        <label>
          Model
          <select value={model} onChange={(e) => setModel(e.target.value)} disabled={!models.data?.length}>
            {(models.data ?? []).map((m) => (
              <option key={m} value={m}>
                {m}
              </option>
            ))}
          </select>
        </label>
        {balance.data && (
          <p className="muted">
            Available: <span data-testid="playground-available">{credits(balance.data.available)}</span> credits
          </p>
        )}
      </section>

      <section className="card chat" aria-labelledby="chat-h">
        <h2 id="chat-h">Chat</h2>
        <ol className="messages" aria-live="polite">
          {messages.map((m, i) => (
            // biome-ignore lint/suspicious/noArrayIndexKey: messages only grow at the end
            <li key={i} className={m.role}>
              <span className="who">{m.role === "user" ? "You" : model}</span>
              <p data-testid={m.role === "assistant" ? "reply" : undefined}>{m.content || (busy ? "…" : "")}</p>
            </li>
          ))}
        </ol>
        <Alert error={error} />
        {cost && (
          <p className="muted" data-testid="cost">
            {cost.prompt} prompt + {cost.completion} completion tokens: {credits(cost.credits)} credits
          </p>
        )}
        <form onSubmit={send} className="row">
          <label className="grow">
            Message
            <textarea
              value={input}
              rows={2}
              onChange={(e) => setInput(e.target.value)}
              onKeyDown={(e) => {
                if (e.key === "Enter" && !e.shiftKey) {
                  e.preventDefault();
                  e.currentTarget.form?.requestSubmit();
                }
              }}
            />
          </label>
          {busy ? (
            <button type="button" onClick={() => abort.current?.abort()}>
              Stop
            </button>
          ) : (
            <button type="submit" className="primary" disabled={!key || !model || !input.trim()}>
              Send
            </button>
          )}
        </form>
      </section>
    </>
  );
}
