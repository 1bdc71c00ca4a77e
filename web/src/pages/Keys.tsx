/** API keys bound to the signed-in wallet: create (the secret is shown once), list with usage, revoke. */
import type { ApiKeysResponse, NewApiKeyResponse } from "@sharedllm/protocol";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { type FormEvent, useState } from "react";
import { api } from "../api.js";
import { useSession } from "../session.js";
import { Alert } from "../ui.js";
import { credits } from "../wallet.js";

export function useKeys() {
  const token = useSession()?.session?.token;
  return useQuery({
    queryKey: ["keys", token],
    queryFn: () => api<ApiKeysResponse>("/v1/keys", { token }).then((r) => r.data),
    enabled: !!token,
    refetchInterval: 10_000,
  });
}

export function useCreateKey() {
  const token = useSession()?.session?.token;
  const queries = useQueryClient();
  return useMutation({
    mutationFn: (name: string) => api<NewApiKeyResponse>("/v1/keys", { body: { name }, token }),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["keys"] }),
  });
}

export function KeysPage() {
  const token = useSession()?.session?.token;
  const keys = useKeys();
  const create = useCreateKey();
  const queries = useQueryClient();
  const revoke = useMutation({
    mutationFn: (id: string) => api(`/v1/keys/${encodeURIComponent(id)}`, { method: "DELETE", token }),
    onSuccess: () => queries.invalidateQueries({ queryKey: ["keys"] }),
  });
  const [name, setName] = useState("");
  const [copied, setCopied] = useState(false);

  const submit = (e: FormEvent) => {
    e.preventDefault();
    setCopied(false);
    create.mutate(name.trim(), { onSuccess: () => setName("") });
  };
  const secret = create.data?.key;
  return (
    <>
      <section className="card" aria-labelledby="new-key-h">
        <h2 id="new-key-h">New key</h2>
        <form onSubmit={submit} className="row">
          <label>
            Name
            <input value={name} onChange={(e) => setName(e.target.value)} placeholder="e.g. my laptop" maxLength={100} />
          </label>
          <button type="submit" className="primary" disabled={!name.trim() || create.isPending}>
            Create key
          </button>
        </form>
        <Alert error={create.error} />
        {secret && (
          <div className="secret" role="status">
            <p>
              Your new key <strong>{create.data?.name}</strong>. Copy it now: it is shown only once.
            </p>
            <code data-testid="new-key">{secret}</code>
            <button
              type="button"
              onClick={() =>
                navigator.clipboard.writeText(secret).then(
                  () => setCopied(true),
                  () => setCopied(false),
                )
              }
            >
              {copied ? "Copied" : "Copy"}
            </button>
          </div>
        )}
      </section>

      <section className="card" aria-labelledby="keys-h">
        <h2 id="keys-h">Your keys</h2>
        <Alert error={keys.error} />
        {keys.data?.length === 0 && <p className="muted">No keys yet.</p>}
        {!!keys.data?.length && (
          <div className="table-wrap">
            <table>
              <thead>
                <tr>
                  <th scope="col">Name</th>
                  <th scope="col">Created</th>
                  <th scope="col">Requests</th>
                  <th scope="col">Tokens</th>
                  <th scope="col">Credits</th>
                  <th scope="col">
                    <span className="sr-only">Actions</span>
                  </th>
                </tr>
              </thead>
              <tbody>
                {keys.data.map((k) => (
                  <tr key={k.id} className={k.revokedAt ? "revoked" : undefined}>
                    <td>{k.name}</td>
                    <td>{new Date(k.createdAt).toLocaleDateString()}</td>
                    <td>{k.usage.requests}</td>
                    <td>{(k.usage.promptTokens + k.usage.completionTokens).toLocaleString("en-US")}</td>
                    <td>{credits(k.usage.credits)}</td>
                    <td>
                      {k.revokedAt ? (
                        "revoked"
                      ) : (
                        <button
                          type="button"
                          disabled={revoke.isPending}
                          onClick={() => revoke.mutate(k.id)}
                          aria-label={`Revoke ${k.name}`}
                        >
                          Revoke
                        </button>
                      )}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        )}
        <Alert error={revoke.error} />
      </section>
    </>
  );
}
