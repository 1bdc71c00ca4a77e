/**
 * The API's description: `GET /openapi.json` (OpenAPI 3.1, built by @fastify/swagger from the
 * routes' schemas) and `GET /docs` (Swagger UI, its assets served from the package, no CDN).
 *
 * Registered before the other plugins: its onRoute hook gives each route its documentation from
 * routeDocs.ts (a route's own schema wins) and hides the routes with no entry. Request schemas a
 * route declares itself are validated (requestValidation.ts: zod, the catalog's errors); those
 * from routeDocs.ts only document, their handlers validating as before. Responses are serialized
 * as before (JSON.stringify), never filtered by their declared schema.
 */
import swagger from "@fastify/swagger";
import swaggerUi from "@fastify/swagger-ui";
import type { FastifyInstance, FastifySchema } from "fastify";
import fp from "fastify-plugin";
import { jsonSchemaTransform } from "fastify-type-provider-zod";
import { validatorCompiler } from "../requestValidation.js";
import { ROUTE_DOCS, UNDOCUMENTED } from "../routeDocs.js";

export const OPENAPI_PATH = "/openapi.json";
export const DOCS_PATH = "/docs";

declare module "fastify" {
  interface FastifyInstance {
    /** every route registered after the openapi plugin, as `METHOD url` (HEAD twins left out) */
    apiRoutes: string[];
  }
}

export const openapiPlugin = fp(
  async (app: FastifyInstance, o: { version: string }) => {
    const routes: string[] = [];
    app.decorate("apiRoutes", routes);
    app.setValidatorCompiler(validatorCompiler);
    app.setSerializerCompiler(() => (data) => JSON.stringify(data));
    app.addHook("onRoute", (route) => {
      const methods = Array.isArray(route.method) ? route.method : [route.method];
      if (methods.every((m) => m === "HEAD")) return;
      const key = `${methods.find((m) => m !== "HEAD")} ${route.url}`;
      routes.push(key);
      const doc = ROUTE_DOCS[key];
      // a route with neither documentation nor a reason is left out, and the openapi test names it
      route.schema = doc ? ({ ...doc, ...route.schema } as FastifySchema) : { ...route.schema, hide: true };
    });
    await app.register(swagger, {
      openapi: {
        openapi: "3.1.0",
        info: {
          title: "SharedLLM coordinator",
          version: o.version,
          description: [
            "OpenAI-compatible inference on a community's machines, plus the site's nodes, accounts and federation. Errors are always `{ error: { message, type, code, param } }`; each route lists the codes it can answer.",
            "",
            "Not described here:",
            ...Object.entries(UNDOCUMENTED).map(([route, why]) => `- \`${route}\`: ${why}`),
          ].join("\n"),
        },
        components: {
          securitySchemes: {
            bearer: {
              type: "http",
              scheme: "bearer",
              description: "an API key (sk-...), or for the account routes a session token (sess_...) from POST /v1/auth/login",
            },
          },
        },
        tags: ["OpenAI", "Site", "Nodes", "Accounts", "Audits", "Federation", "History"].map((name) => ({ name })),
      },
      transform: jsonSchemaTransform,
    });
    await app.register(swaggerUi, { routePrefix: DOCS_PATH, staticCSP: true });
    app.get(OPENAPI_PATH, { schema: { hide: true } }, async () => app.swagger());
  },
  { name: "openapi", dependencies: ["errors"] },
);
