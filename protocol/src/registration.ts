/**
 * Node registration (`POST /v1/nodes/register`): a node signs the request with its site's join
 * token (siteAuth.ts, in the `/node` entry) and proves it holds the key of the address it claims
 * with an EIP-191 signature over the request's timestamp and nonce; it gets a session token for
 * the control channel.
 */
import { z } from "zod";

export const REGISTER_PATH = "/v1/nodes/register";

/** What a node proves with its own key at registration (EIP-191 personal message). */
export function registrationMessage(p: { nodeId: string; timestamp: string; nonce: string }): string {
  return `SharedLLM node registration\nnode: ${p.nodeId.toLowerCase()}\ntimestamp: ${p.timestamp}\nnonce: ${p.nonce}`;
}

export const registerRequestSchema = z.object({
  /** the node's address (its payout account), checksummed or not */
  nodeId: z.string().regex(/^0x[0-9a-fA-F]{40}$/, "must be an Ethereum address"),
  /** EIP-191 signature of registrationMessage by nodeId's key */
  proof: z.string().regex(/^0x[0-9a-fA-F]+$/),
});
export type RegisterRequest = z.infer<typeof registerRequestSchema>;

export interface RegisterResponse {
  nodeId: string;
  /** bearer for the control channel */
  sessionToken: string;
  expiresAt: string;
}
