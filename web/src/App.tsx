/**
 * The portal's frame: header with the wallet, navigation, banners for an unreachable coordinator
 * and a wallet on the wrong chain, and the page for the current path.
 */
import type { LedgerResponse } from "@sharedllm/protocol";
import { useQuery } from "@tanstack/react-query";
import { type MouseEvent, type ReactNode, useEffect, useState } from "react";
import { useChainId, useConnect, useConnection, useConnectors, useDisconnect, useSwitchChain } from "wagmi";
import { api, UNREACHABLE } from "./api.js";
import { AuditsPage } from "./pages/Audits.js";
import { ContributePage } from "./pages/Contribute.js";
import { CreditsPage } from "./pages/Credits.js";
import { EarningsPage } from "./pages/Earnings.js";
import { FederationPage } from "./pages/Federation.js";
import { HistoryPage } from "./pages/History.js";
import { KeysPage } from "./pages/Keys.js";
import { NetworkPage } from "./pages/Network.js";
import { PlaygroundPage } from "./pages/Playground.js";
import { useSession } from "./session.js";
import { Alert } from "./ui.js";
import { shortAddress, walletError } from "./wallet.js";

interface Page {
  path: string;
  title: string;
  /** only on a coordinator with credits (a ledger) */
  ledger: boolean;
  /** asks for a signed-in wallet */
  wallet: boolean;
  render: (ledger: LedgerResponse | undefined) => ReactNode;
}

const PAGES: Page[] = [
  { path: "/", title: "Credits", ledger: true, wallet: true, render: (l) => l && <CreditsPage ledger={l} /> },
  { path: "/keys", title: "API keys", ledger: true, wallet: true, render: () => <KeysPage /> },
  { path: "/earnings", title: "Earnings", ledger: true, wallet: true, render: (l) => l && <EarningsPage ledger={l} /> },
  { path: "/history", title: "History", ledger: true, wallet: true, render: () => <HistoryPage /> },
  { path: "/contribute", title: "Contribute", ledger: true, wallet: false, render: (l) => l && <ContributePage ledger={l} /> },
  { path: "/network", title: "Network", ledger: false, wallet: false, render: () => <NetworkPage /> },
  { path: "/playground", title: "Playground", ledger: false, wallet: false, render: (l) => <PlaygroundPage ledger={l} /> },
  // the operator's, with the operator key: audits exist only where jobs are paid
  { path: "/audits", title: "Audits", ledger: true, wallet: false, render: () => <AuditsPage /> },
  // public: a coordinator without federation says so there
  { path: "/federation", title: "Federation", ledger: false, wallet: false, render: () => <FederationPage /> },
];

function usePath(): [string, (to: string) => void] {
  const [path, setPath] = useState(location.pathname);
  useEffect(() => {
    const onPop = () => setPath(location.pathname);
    addEventListener("popstate", onPop);
    return () => removeEventListener("popstate", onPop);
  }, []);
  return [
    path,
    (to) => {
      history.pushState(null, "", to);
      setPath(to);
      scrollTo(0, 0);
    },
  ];
}

export function App({ ledger }: { ledger?: LedgerResponse }) {
  const [path, go] = usePath();
  const pages = PAGES.filter((p) => ledger || !p.ledger);
  const page = pages.find((p) => p.path === path) ?? (pages.find((p) => p.path === "/network") as Page);
  const health = useQuery({ queryKey: ["health"], queryFn: () => api("/healthz"), refetchInterval: 3_000, retry: false });
  useEffect(() => {
    document.title = `${page.title} · SharedLLM`;
  }, [page]);
  const link = (p: Page) => (e: MouseEvent) => {
    if (e.metaKey || e.ctrlKey || e.shiftKey) return;
    e.preventDefault();
    go(p.path);
  };
  return (
    <>
      <header className="top">
        <a className="brand" href="/" onClick={link(PAGES[0] as Page)}>
          SharedLLM
        </a>
        {ledger && <WalletButton />}
      </header>
      <nav aria-label="Pages">
        {pages.map((p) => (
          <a key={p.path} href={p.path} onClick={link(p)} aria-current={p === page ? "page" : undefined}>
            {p.title}
          </a>
        ))}
      </nav>
      {health.isError && (
        <p className="banner error" role="alert">
          {UNREACHABLE}
        </p>
      )}
      {ledger && <ChainBanner ledger={ledger} />}
      <main>
        <h1>{page.title}</h1>
        {page.wallet ? <SignedIn>{page.render(ledger)}</SignedIn> : page.render(ledger)}
      </main>
    </>
  );
}

/** Connect / sign in / the signed-in address with sign out. */
function WalletButton() {
  const { address, isConnected } = useConnection();
  const connectors = useConnectors();
  const { connect, isPending, error } = useConnect();
  const { disconnect } = useDisconnect();
  const session = useSession();
  if (!isConnected || !address) {
    return (
      <div className="wallet">
        {connectors.map((c) => (
          <button key={c.uid} type="button" disabled={isPending} onClick={() => connect({ connector: c })}>
            {isPending ? "Connecting…" : c.type === "injected" && c.id === "injected" ? "Connect wallet" : `Connect ${c.name}`}
          </button>
        ))}
        {error && (
          <span className="error" role="alert">
            {/provider not found/i.test(error.message) ? "No wallet found in this browser." : walletError(error)}
          </span>
        )}
      </div>
    );
  }
  return (
    <div className="wallet">
      <span className="address" title={address}>
        {shortAddress(address)}
      </span>
      {session?.session ? (
        <button type="button" onClick={() => session.signOut()}>
          Sign out
        </button>
      ) : (
        <button
          type="button"
          onClick={() => {
            disconnect();
          }}
        >
          Disconnect
        </button>
      )}
    </div>
  );
}

/** A page for a signed-in wallet: otherwise the steps to get there. */
function SignedIn({ children }: { children: ReactNode }) {
  const { isConnected } = useConnection();
  const session = useSession();
  if (session?.session) return children;
  return (
    <section className="card signin">
      {!isConnected ? (
        <p>Connect a wallet to buy credits, make API keys and see what your machines earned.</p>
      ) : (
        <>
          <p>Sign in with your wallet: it signs a message (no transaction, no gas) that proves the address is yours.</p>
          <button type="button" className="primary" disabled={session?.signingIn} onClick={() => session?.signIn()}>
            {session?.signingIn ? "Waiting for the signature…" : "Sign in with Ethereum"}
          </button>
        </>
      )}
      <Alert error={session?.error} />
    </section>
  );
}

/** The wallet is on another chain than the coordinator's ledger: offer the switch. */
function ChainBanner({ ledger }: { ledger: LedgerResponse }) {
  const { isConnected, chainId } = useConnection();
  const expected = useChainId();
  const { switchChain, isPending, error } = useSwitchChain();
  if (!isConnected || chainId === undefined || chainId === ledger.chainId) return null;
  return (
    <div className="banner warn" role="alert">
      <span>
        Your wallet is on chain {chainId}; this coordinator settles on chain {ledger.chainId}.
      </span>
      <button type="button" disabled={isPending} onClick={() => switchChain({ chainId: expected })}>
        {isPending ? "Switching…" : `Switch to chain ${ledger.chainId}`}
      </button>
      {error && <span className="error">{walletError(error)}</span>}
    </div>
  );
}
