/**
 * The signed-in wallet: Sign-In with Ethereum (EIP-4361) against the coordinator gives a session
 * token, kept in localStorage so a reload keeps the session; the coordinator checks it on load.
 */
import { ApiError, type LedgerResponse } from "@sharedllm/protocol";
import { createContext, type ReactNode, useCallback, useContext, useEffect, useState } from "react";
import { createSiweMessage } from "viem/siwe";
import { useConnection, useSignMessage } from "wagmi";
import { api } from "./api.js";
import { walletError } from "./wallet.js";

const STORAGE_KEY = "sharedllm.session";

interface Stored {
  token: string;
  address: `0x${string}`;
}

interface Session {
  session: Stored | undefined;
  signingIn: boolean;
  error: string | undefined;
  signIn(): Promise<void>;
  signOut(): Promise<void>;
}

const SessionContext = createContext<Session | undefined>(undefined);

/** The session, or undefined where the coordinator runs without credits (no wallet, no sign-in). */
export function useSession(): Session | undefined {
  return useContext(SessionContext);
}

function load(): Stored | undefined {
  try {
    const raw = localStorage.getItem(STORAGE_KEY);
    return raw ? (JSON.parse(raw) as Stored) : undefined;
  } catch {
    return undefined;
  }
}

export function SessionProvider({ ledger, children }: { ledger: LedgerResponse; children: ReactNode }) {
  const [session, setSession] = useState<Stored | undefined>(load);
  const [signingIn, setSigningIn] = useState(false);
  const [error, setError] = useState<string>();
  const { address } = useConnection();
  const { signMessageAsync } = useSignMessage();

  const forget = useCallback(() => {
    localStorage.removeItem(STORAGE_KEY);
    setSession(undefined);
  }, []);

  // a stored session is checked once on load; one the coordinator no longer knows is dropped
  useEffect(() => {
    const stored = load();
    if (!stored) return;
    api<{ address: string }>("/v1/auth/session", { token: stored.token }).catch((err: unknown) => {
      if (err instanceof ApiError && err.status === 401) forget();
    });
  }, [forget]);

  // another account in the wallet is another user: the session of the previous one ends here
  useEffect(() => {
    if (session && address && address.toLowerCase() !== session.address.toLowerCase()) forget();
  }, [address, session, forget]);

  const signIn = useCallback(async () => {
    if (!address) return;
    setSigningIn(true);
    setError(undefined);
    try {
      const { nonce } = await api<{ nonce: string }>("/v1/auth/nonce");
      const message = createSiweMessage({
        domain: location.host,
        address,
        statement: "Sign in to SharedLLM.",
        uri: location.origin,
        version: "1",
        chainId: ledger.chainId,
        nonce,
        expirationTime: new Date(Date.now() + 10 * 60_000),
      });
      const signature = await signMessageAsync({ message });
      const res = await api<{ token: string; address: `0x${string}` }>("/v1/auth/login", { body: { message, signature } });
      const stored = { token: res.token, address: res.address };
      localStorage.setItem(STORAGE_KEY, JSON.stringify(stored));
      setSession(stored);
    } catch (err) {
      setError(err instanceof ApiError ? err.message : walletError(err));
    } finally {
      setSigningIn(false);
    }
  }, [address, ledger.chainId, signMessageAsync]);

  const signOut = useCallback(async () => {
    const token = session?.token;
    forget();
    if (token) await api("/v1/auth/logout", { method: "POST", body: {}, token }).catch(() => {});
  }, [session, forget]);

  return <SessionContext.Provider value={{ session, signingIn, error, signIn, signOut }}>{children}</SessionContext.Provider>;
}
