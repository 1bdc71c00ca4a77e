/**
 * A NATS server of a test's own (Debian's `nats-server`, as on these machines) on a free
 * loopback port: replicas meet there, and a test may stop and start it again (a NATS restart)
 * on the same port.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createConnection } from "node:net";
import { freePort, waitFor } from "./helpers.ts";

export interface TestNats {
  url: string;
  /** stops it (SIGKILL): replicas lose it */
  stop(): Promise<void>;
  /** starts it again on the same port */
  start(): Promise<void>;
}

const accepts = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = createConnection({ host: "127.0.0.1", port }, () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });

export async function startNats(): Promise<TestNats> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const start = async () => {
    child = spawn("nats-server", ["-a", "127.0.0.1", "-p", String(port)], { stdio: "ignore" });
    await waitFor("NATS to listen", () => accepts(port), 10_000);
  };
  const stop = async () => {
    const c = child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once("exit", r));
    c.kill("SIGKILL");
    await exited;
  };
  await start();
  return { url: `nats://127.0.0.1:${port}`, stop, start };
}
