/**
 * The OpenAPI description of the routes a coordinator registers only in some configurations: the
 * accounts (with a ledger), audits, federation and history (with a chain) plugins. A coordinator's own `/openapi.json`
 * lists what it serves; a client for every configuration (sdk/typescript) needs both.
 */
import Fastify from "fastify";
import { errorsPlugin } from "./errors.js";
import { federationPlugin } from "./federation/plugin.js";
import { accountsPlugin } from "./plugins/accounts.js";
import { auditsPlugin } from "./plugins/audits.js";
import { historyPlugin } from "./plugins/history.js";
import { OPENAPI_PATH, openapiPlugin } from "./plugins/openapi.js";

/** The spec of the optional plugins' routes (they are enumerated only: their dependencies are never called). */
export async function optionalRoutesSpec(): Promise<{ paths: Record<string, unknown> }> {
  const app = Fastify();
  try {
    await app.register(errorsPlugin);
    await app.register(openapiPlugin, { version: "optional" });
    await app.register(accountsPlugin, { signInsPerMinute: 1 } as never);
    await app.register(auditsPlugin, {} as never);
    await app.register(federationPlugin, {} as never);
    await app.register(historyPlugin, {} as never);
    return (await app.inject(OPENAPI_PATH)).json();
  } finally {
    await app.close();
  }
}
