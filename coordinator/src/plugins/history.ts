/**
 * The chain's history as the embedded indexer read it (docs/indexing.md): `GET /v1/history/...`
 * for an address's purchases, escrow movements, settlements and claims, the federation's events,
 * one transaction's events (what the portal links to where the chain has no explorer), and where
 * the indexer stands. Public, as the chain itself is; validated by the routes' own zod
 * schemas (400 invalid_request naming the parameter).
 */
import { ApiError, type historyStatusSchema } from "@sharedllm/protocol";
import type { FastifyInstance } from "fastify";
import { z } from "zod";
import { CURSOR_PATTERN, type History, type Position, parseCursor } from "../indexer/history.js";
import type { Indexer } from "../indexer/indexer.js";

export interface HistoryPluginOptions {
  history: History;
  indexer: Indexer;
  /** a block explorer's base URL: the portal links `{explorerUrl}/tx/{hash}` */
  explorerUrl?: string;
}

/** What a history route takes: the address (any case) and a page. */
export const historyAddressParams = z.object({
  address: z
    .string()
    .regex(/^0x[0-9a-fA-F]{40}$/)
    .describe("an address, in any case"),
});

export const historyPageQuery = z.object({
  limit: z
    .string()
    .regex(/^0*([1-9]\d?|[1-4]\d\d|500)$/)
    .optional()
    .describe("1 to 500 (default 50)"),
  cursor: z.string().regex(CURSOR_PATTERN).optional().describe("the nextCursor of the page before (block.logIndex)"),
});

export const federationHistoryQuery = historyPageQuery.extend({
  address: historyAddressParams.shape.address.optional().describe("only the events that concern this address"),
});

export const transactionParams = z.object({
  hash: z
    .string()
    .regex(/^0x[0-9a-fA-F]{64}$/)
    .describe("a transaction hash"),
});

const page = (q: z.infer<typeof historyPageQuery>) => ({ at: parseCursor(q.cursor), limit: q.limit === undefined ? 50 : Number(q.limit) });

export async function historyPlugin(app: FastifyInstance, o: HistoryPluginOptions): Promise<void> {
  const byAddress = { schema: { params: historyAddressParams, querystring: historyPageQuery } };
  type ByAddress = { Params: z.infer<typeof historyAddressParams>; Querystring: z.infer<typeof historyPageQuery> };

  app.get("/v1/history/status", async (): Promise<z.infer<typeof historyStatusSchema>> => {
    const s = await o.indexer.status();
    return {
      indexing: s.state === "running",
      block: s.block ? s.block.number.toString() : null,
      blockHash: s.block?.hash ?? null,
      lastError: s.lastError ?? null,
      explorerUrl: o.explorerUrl ?? null,
    };
  });

  // an address's lists, each a page of one kind
  const lists = {
    purchases: (a: string, at: Position | undefined, n: number) => o.history.purchases(a, at, n),
    escrow: (a: string, at: Position | undefined, n: number) => o.history.escrow(a, at, n),
    settlements: (a: string, at: Position | undefined, n: number) => o.history.settlements(a, at, n),
    claims: (a: string, at: Position | undefined, n: number) => o.history.claims(a, at, n),
  };
  for (const [name, list] of Object.entries(lists)) {
    app.get<ByAddress>(`/v1/history/:address/${name}`, byAddress, async (req) => {
      const { at, limit } = page(req.query);
      return list(req.params.address.toLowerCase(), at, limit);
    });
  }

  app.get<{ Querystring: z.infer<typeof federationHistoryQuery> }>(
    "/v1/history/federation",
    { schema: { querystring: federationHistoryQuery } },
    async (req) => {
      const { at, limit } = page(req.query);
      return o.history.federation(req.query.address?.toLowerCase(), at, limit);
    },
  );

  app.get<{ Params: z.infer<typeof transactionParams> }>(
    "/v1/history/transactions/:hash",
    { schema: { params: transactionParams } },
    async (req) => {
      const tx = await o.history.transaction(req.params.hash.toLowerCase());
      if (!tx)
        throw new ApiError("not_found", "nothing indexed comes from this transaction (yet): it may not touch the ledger or the registry");
      return tx;
    },
  );
}
