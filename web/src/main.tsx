import type { LedgerResponse } from "@sharedllm/protocol";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { WagmiProvider } from "wagmi";
import { App } from "./App.js";
import { api } from "./api.js";
import { SessionProvider } from "./session.js";
import { walletConfig } from "./wallet.js";
import "./styles.css";

const root = createRoot(document.getElementById("root") as HTMLElement);
const queryClient = new QueryClient({ defaultOptions: { queries: { retry: 1, refetchOnWindowFocus: false } } });

/** The coordinator's chain decides the wallet config: the portal starts once it is known. */
async function boot() {
  let ledger: LedgerResponse | undefined;
  try {
    // a coordinator without credits has no ledger: the network map and the playground still work
    const health = await api<{ credits: boolean }>("/healthz");
    if (health.credits) ledger = await api<LedgerResponse>("/v1/ledger");
  } catch (err) {
    root.render(
      <main className="boot-error" role="alert">
        <h1>SharedLLM</h1>
        <p>{err instanceof Error ? err.message : String(err)}</p>
        <button type="button" onClick={boot}>
          Try again
        </button>
      </main>,
    );
    return;
  }
  root.render(
    <StrictMode>
      {ledger ? (
        <WagmiProvider config={walletConfig(ledger)}>
          <QueryClientProvider client={queryClient}>
            <SessionProvider ledger={ledger}>
              <App ledger={ledger} />
            </SessionProvider>
          </QueryClientProvider>
        </WagmiProvider>
      ) : (
        <QueryClientProvider client={queryClient}>
          <App />
        </QueryClientProvider>
      )}
    </StrictMode>,
  );
}

boot();
