/**
 * Registers this node with its site's coordinator: the request is HMAC-signed
 * with the join token and carries the node key's signature over the same nonce.
 * Returns the control-channel session token, which `sessionCredentials` keeps
 * until the coordinator stops accepting it.
 */
import { randomBytes } from "node:crypto";
import http from "node:http";
import https from "node:https";
import { REGISTER_PATH, type RegisterRequest, type RegisterResponse, registrationMessage } from "@sharedllm/protocol";
import { signSiteRequest } from "@sharedllm/protocol/node";
import type { PrivateKeyAccount } from "viem/accounts";
import { SharedLLMError } from "../errors.js";
import type { SessionCredentials } from "./client.js";

/** The coordinator said no: retrying with the same credentials will not help. */
export class RegistrationRefused extends SharedLLMError {
  override name = "RegistrationRefused";
  constructor(message: string) {
    super("refused", message);
  }
}

export interface RegistrationOptions {
  coordinatorUrl: string;
  joinToken: string;
  account: PrivateKeyAccount;
  /** PEM certificate(s) to trust for an https coordinator (its own self-signed one); default: the system's CAs */
  coordinatorCa?: string;
  signal?: AbortSignal;
}

export async function registerNode(o: RegistrationOptions): Promise<RegisterResponse> {
  const nodeId = o.account.address.toLowerCase();
  // the proof signs the timestamp and nonce of this very request
  const now = Date.now();
  const nonce = randomBytes(16).toString("hex");
  const proof = await o.account.signMessage({ message: registrationMessage({ nodeId, timestamp: String(now), nonce }) });
  const req: RegisterRequest = { nodeId, proof };
  const body = JSON.stringify(req);
  const headers = signSiteRequest(o.joinToken, "POST", REGISTER_PATH, body, now, nonce);
  const res = await post(new URL(REGISTER_PATH, o.coordinatorUrl), { "content-type": "application/json", ...headers }, body, o);
  const json = (() => {
    try {
      return JSON.parse(res.text) as RegisterResponse & { error?: { message?: string } };
    } catch {
      return {} as { error?: { message?: string } };
    }
  })();
  if (res.status === 401 || res.status === 400) {
    throw new RegistrationRefused(`the coordinator refused this node: ${json.error?.message ?? `HTTP ${res.status}`}`);
  }
  if (res.status < 200 || res.status > 299)
    throw new SharedLLMError("unreachable", `registration failed: HTTP ${res.status} ${json.error?.message ?? ""}`, {
      hint: "the coordinator could not take the registration; try again, or ask its operator",
    });
  return json as RegisterResponse;
}

/** A session token from registration, kept until the coordinator stops accepting it. */
export function sessionCredentials(o: RegistrationOptions): SessionCredentials {
  let current: Promise<string> | undefined;
  return {
    get() {
      current ??= registerNode(o).then(
        (r) => r.sessionToken,
        (err) => {
          current = undefined;
          throw err;
        },
      );
      return current;
    },
    invalidate() {
      current = undefined;
    },
  };
}

/** How long a registration may take before it fails (and the node tries again). */
const REGISTER_TIMEOUT_MS = 10_000;

/** POSTs with node's own client, which takes the trusted CA for this one request (fetch cannot). */
function post(
  url: URL,
  headers: Record<string, string>,
  body: string,
  o: { coordinatorCa?: string; signal?: AbortSignal },
): Promise<{ status: number; text: string }> {
  const client = url.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(
      url,
      {
        method: "POST",
        headers,
        signal: o.signal,
        timeout: REGISTER_TIMEOUT_MS,
        ...(o.coordinatorCa && { ca: o.coordinatorCa }),
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8");
        res.on("data", (chunk: string) => {
          text += chunk;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    // the timeout only tells: the request is ended here, which fails it
    req.on("timeout", () =>
      req.destroy(new Error(`the coordinator did not answer the registration within ${REGISTER_TIMEOUT_MS / 1000} s`)),
    );
    req.end(body);
  });
}
