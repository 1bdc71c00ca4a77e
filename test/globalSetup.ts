/**
 * Makes the shared cache ready before the suite: the engine is built (about 6
 * minutes on 2 cores the first time, then reused) and the default model pulled;
 * the web portal's production build is made from its sources, and Debian's
 * Chromium (the browser tests) and nginx (the front test) are installed where
 * they are missing (as root, with apt-get); the nginx service the package may
 * start is stopped.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { ensureEngine, ModelStore, resolvePaths, terminalProgress } from "@sharedllm/node";
import { CHROMIUM } from "./browser.ts";
import { NGINX, nginxMissing } from "./nginx.ts";

export default async function setup() {
  const { cache } = resolvePaths();
  await ensureEngine({ cache, progress: terminalProgress() });
  await new ModelStore(cache).pull("default", { progress: terminalProgress() });
  // the production build, as `npm install` makes it: vitest's NODE_ENV=test would make Vite bundle
  // React's development build, and a later `sharedllm up` would serve that
  execFileSync("npm", ["run", "--silent", "build", "-w", "@sharedllm/web"], {
    cwd: join(import.meta.dirname, ".."),
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, NODE_ENV: "production" },
  });
  const missing = [...(existsSync(CHROMIUM) ? [] : ["chromium"]), ...(nginxMissing ? ["nginx"] : [])];
  if (missing.length > 0 && process.getuid?.() === 0) {
    process.stderr.write(`installing Debian's ${missing.join(" and ")} for the browser and front tests (apt-get, a few minutes)\n`);
    const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
    execFileSync("apt-get", ["update", "-q"], { stdio: ["ignore", "ignore", "inherit"], env });
    execFileSync("apt-get", ["install", "-y", "-q", ...missing], { stdio: ["ignore", "ignore", "inherit"], env });
    // the package's own service, where its install started it: tests run their own nginx, and port 80 stays free
    if (missing.includes("nginx")) spawnSync(NGINX, ["-s", "stop"], { stdio: "ignore" });
  }
}
