import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Fastify from "fastify";
import { afterAll, describe, expect, it } from "vitest";
import { errorsPlugin } from "../errors.js";
import { webPlugin } from "./web.js";

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function app(built: boolean) {
  const root = join(await mkdtemp(join(tmpdir(), "sharedllm-web-")), "dist");
  dirs.push(root);
  if (built) {
    await mkdir(join(root, "assets"), { recursive: true });
    await writeFile(join(root, "index.html"), "<!doctype html><title>portal</title>");
    await writeFile(join(root, "assets", "index-abc.js"), "console.log(1)");
  }
  const a = Fastify();
  await a.register(errorsPlugin);
  await a.register(webPlugin, { root });
  return a;
}

describe("the portal's files", () => {
  it("serves the page at / and at the portal's own paths, never cached; hashed assets cached for good", async () => {
    const a = await app(true);
    for (const path of ["/", "/keys", "/playground"]) {
      const res = await a.inject(path);
      expect(res.statusCode).toBe(200);
      expect(res.body).toContain("<title>portal</title>");
      expect(res.headers["cache-control"]).toBe("no-cache");
      // cross-origin isolated: the Contribute page's engine needs SharedArrayBuffer
      expect(res.headers["cross-origin-opener-policy"]).toBe("same-origin");
      expect(res.headers["cross-origin-embedder-policy"]).toBe("require-corp");
    }
    const asset = await a.inject("/assets/index-abc.js");
    expect(asset.statusCode).toBe(200);
    expect(asset.headers["cache-control"]).toContain("immutable");
    const missing = await a.inject("/nowhere");
    expect(missing.statusCode).toBe(404);
    expect(missing.json().error.code).toBe("not_found");
  });

  it("serves what is on disk now: a portal rebuilt while it runs, and one built after it started", async () => {
    const a = await app(true);
    const root = dirs.at(-1) as string;
    await rm(join(root, "assets"), { recursive: true });
    await mkdir(join(root, "assets"));
    await writeFile(join(root, "assets", "index-def.js"), "console.log(2)");
    await writeFile(join(root, "index.html"), "<!doctype html><title>rebuilt</title>");
    expect((await a.inject("/")).body).toContain("<title>rebuilt</title>");
    expect((await a.inject("/assets/index-def.js")).statusCode).toBe(200);
    expect((await a.inject("/assets/index-abc.js")).statusCode).toBe(404);

    const later = await app(false);
    expect((await later.inject("/")).statusCode).toBe(404);
    const built = dirs.at(-1) as string;
    await mkdir(join(built, "assets"), { recursive: true });
    await writeFile(join(built, "index.html"), "<!doctype html><title>portal</title>");
    await writeFile(join(built, "assets", "index-abc.js"), "console.log(1)");
    expect((await later.inject("/network")).body).toContain("<title>portal</title>");
    expect((await later.inject("/assets/index-abc.js")).statusCode).toBe(200);
  });

  it("says how to build it where it is not built", async () => {
    const res = await (await app(false)).inject("/");
    expect(res.statusCode).toBe(404);
    expect(res.json().error.message).toContain("npm run build");
  });
});
