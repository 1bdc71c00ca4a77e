/**
 * Registers this node with its site's coordinator: the request is HMAC-signed
 * with the join token and carries the node key's signature over the same nonce.
 * Returns the control-channel session token.
 */
import { randomBytes } from "node:crypto";
import { REGISTER_PATH, type RegisterRequest, type RegisterResponse, registrationMessage, signSiteRequest } from "@sharedllm/protocol";
import type { PrivateKeyAccount } from "viem/accounts";

/** The coordinator said no: retrying with the same credentials will not help. */
export class RegistrationRefused extends Error {
  override name = "RegistrationRefused";
}

export async function registerNode(o: {
  coordinatorUrl: string;
  joinToken: string;
  account: PrivateKeyAccount;
  signal?: AbortSignal;
}): Promise<RegisterResponse> {
  const nodeId = o.account.address.toLowerCase();
  // the proof signs the timestamp and nonce of this very request
  const now = Date.now();
  const nonce = randomBytes(16).toString("hex");
  const proof = await o.account.signMessage({ message: registrationMessage({ nodeId, timestamp: String(now), nonce }) });
  const req: RegisterRequest = { nodeId, proof };
  const body = JSON.stringify(req);
  const headers = signSiteRequest(o.joinToken, "POST", REGISTER_PATH, body, now, nonce);
  const res = await fetch(new URL(REGISTER_PATH, o.coordinatorUrl), {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body,
    signal: o.signal,
  });
  const json = (await res.json().catch(() => ({}))) as RegisterResponse & { error?: { message?: string } };
  if (res.status === 401 || res.status === 400) {
    throw new RegistrationRefused(`the coordinator refused this node: ${json.error?.message ?? `HTTP ${res.status}`}`);
  }
  if (!res.ok) throw new Error(`registration failed: HTTP ${res.status} ${json.error?.message ?? ""}`);
  return json;
}
