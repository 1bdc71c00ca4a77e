/**
 * nginx in front of coordinator replicas, for tests: the documented configuration
 * (docs/nginx/sharedllm.conf) rendered with the test's replicas, port, certificate and paths, run
 * in the foreground by Debian's nginx; and HTTPS requests to it that trust the test's certificate.
 */
import { execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import type { IncomingMessage } from "node:http";
import { request } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "@sharedllm/node";
import { waitFor } from "./helpers.ts";

/** Debian's nginx (apt-get install nginx; test/globalSetup.ts installs it as root). */
export const NGINX = "/usr/sbin/nginx";

/** The configuration users are given, and the one tests run. */
export const NGINX_CONF = join(import.meta.dirname, "..", "docs", "nginx", "sharedllm.conf");

/** Why tests that need nginx are skipped; undefined where it is installed. */
export const nginxMissing = existsSync(NGINX) ? undefined : `${NGINX} not found: install Debian's nginx (apt-get install nginx)`;

/**
 * The certificate nginx serves in a test, in `dir`: self-signed for 127.0.0.1, as an operator's
 * own CA would sign one; `ca` is what clients trust.
 */
export async function frontCertificate(dir: string): Promise<{ cert: string; key: string; ca: string }> {
  const cert = join(dir, "front.crt");
  const key = join(dir, "front.key");
  execFileSync(
    "openssl",
    ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"].concat([
      "-keyout",
      key,
      "-out",
      cert,
      "-subj",
      "/CN=sharedllm-front",
      "-addext",
      "subjectAltName=IP:127.0.0.1",
    ]),
    { stdio: "ignore" },
  );
  return { cert, key, ca: await readFile(cert, "utf8") };
}

export interface Front {
  /** https://127.0.0.1:<port> */
  url: string;
  /** the access log so far (the documented `sharedllm` format: upstream addresses and statuses) */
  accessLog(): Promise<string>;
  /** stops nginx (its whole process group) and removes its files */
  stop(): Promise<void>;
}

interface RenderOptions {
  /** host:port of each replica */
  replicas: string[];
  port: number;
  cert: string;
  key: string;
  accessLog: string;
}

/**
 * The documented configuration with the test's replicas (each upstream's server list), listen
 * address, TLS files and access log; throws when the file no longer has what is replaced.
 */
export function renderNginxConf(conf: string, o: RenderOptions): string {
  // each upstream's server list, with the parameters its documented servers have
  const servers = (list: string) => {
    const params = /^ {4}server \S+(.*);$/m.exec(list)?.[1] ?? "";
    return o.replicas.map((r) => `    server ${r}${params};\n`).join("");
  };
  const edits: [RegExp, string | ((match: string) => string), number][] = [
    [/(?:^ {4}server \S+[^;\n]*;\n)+/gm, servers, 2],
    [/^ {4}listen 443 ssl;$/gm, `    listen 127.0.0.1:${o.port} ssl;`, 1],
    [/^ {4}ssl_certificate +\S+;$/gm, `    ssl_certificate ${o.cert};`, 1],
    [/^ {4}ssl_certificate_key +\S+;$/gm, `    ssl_certificate_key ${o.key};`, 1],
    [/^ {4}access_log \S+ sharedllm;$/gm, `    access_log ${o.accessLog} sharedllm;`, 1],
  ];
  let out = conf;
  for (const [pattern, by, count] of edits) {
    const found = out.match(pattern)?.length ?? 0;
    if (found !== count) throw new Error(`${NGINX_CONF}: ${pattern} matches ${found} times, not ${count}; update renderNginxConf`);
    out = out.replace(pattern, (match) => (typeof by === "string" ? by : by(match)));
  }
  return out;
}

/**
 * Runs nginx in the foreground with the documented configuration in front of `replicas`
 * (host:port), TLS with `cert`/`key`, every file in a temp folder; resolves once it answers
 * /healthz through a replica.
 */
export async function startNginx(o: { replicas: string[]; cert: string; key: string }): Promise<Front> {
  if (nginxMissing) throw new Error(nginxMissing);
  const dir = await mkdtemp(join(tmpdir(), "sharedllm-nginx-"));
  // run as root, nginx's workers are nobody: they write request bodies under the temp paths here
  await chmod(dir, 0o755);
  const port = await freePort();
  const accessLog = join(dir, "access.log");
  const site = join(dir, "sharedllm.conf");
  await writeFile(site, renderNginxConf(await readFile(NGINX_CONF, "utf8"), { ...o, port, accessLog }));
  // what Debian's /etc/nginx/nginx.conf gives the site (gzip on included), with the files here
  const temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((t) => `    ${t}_temp_path ${join(dir, t)};`).join("\n");
  const main = join(dir, "nginx.conf");
  await writeFile(
    main,
    `worker_processes auto;
pid ${join(dir, "nginx.pid")};
events { worker_connections 512; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    gzip on;
${temp}
    include ${site};
}
`,
  );
  const errorLog = join(dir, "error.log");
  const child = spawn(NGINX, ["-p", dir, "-e", errorLog, "-c", main, "-g", "daemon off;"], { detached: true, stdio: "ignore" });
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      process.kill(-(child.pid as number), "SIGTERM");
      const killed = setTimeout(() => process.kill(-(child.pid as number), "SIGKILL"), 5_000);
      await exited;
      clearTimeout(killed);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const url = `https://127.0.0.1:${port}`;
  const ca = await readFile(o.cert, "utf8");
  try {
    await waitFor(
      "nginx to answer",
      async () => {
        if (child.exitCode !== null) throw new Error(`nginx exited: ${await readFile(errorLog, "utf8").catch(() => "")}`);
        return (await httpsFetch(`${url}/healthz`, { ca }).catch(() => undefined))?.status === 200;
      },
      10_000,
    );
  } catch (err) {
    await stop();
    throw err;
  }
  return { url, accessLog: () => readFile(accessLog, "utf8"), stop };
}

export interface HttpsInit {
  /** PEM certificate(s) to trust */
  ca: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string;
  /** the address to connect from (127.0.0.2: another client on this machine) */
  localAddress?: string;
  /** aborts the request (and the reading of its body) */
  signal?: AbortSignal;
}

export interface HttpsResponse {
  status: number;
  headers: IncomingMessage["headers"];
  /** the body as it arrives */
  body: IncomingMessage;
  text(): Promise<string>;
}

/** An HTTPS request that trusts `ca` (fetch cannot be given a CA); resolves once the headers are in. */
export function httpsFetch(url: string, init: HttpsInit): Promise<HttpsResponse> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: init.method ?? "GET",
      headers: init.headers,
      ca: init.ca,
      localAddress: init.localAddress,
      agent: false,
      signal: init.signal,
    });
    req.once("error", reject);
    req.once("response", (res) => {
      res.setEncoding("utf8");
      const text = async () => {
        let s = "";
        for await (const chunk of res) s += chunk;
        return s;
      };
      resolve({ status: res.statusCode as number, headers: res.headers, body: res, text });
    });
    req.end(init.body);
  });
}
