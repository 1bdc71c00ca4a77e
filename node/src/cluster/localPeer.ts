/**
 * Who is on the other end of a loopback TCP connection. llama.cpp's `--rpc` takes only host:port,
 * so a head's tunnel endpoints listen on 127.0.0.1, where any local user could connect; on Linux
 * the kernel's socket table (/proc/net/tcp) names the uid that owns the connecting socket, and
 * only this process's own uid (its llama-server) is served.
 */
import { readFile } from "node:fs/promises";
import type { Socket } from "node:net";

/** "0100007F:1F90" -> port 8080 */
function port(hexAddress: string): number {
  return Number.parseInt(hexAddress.slice(hexAddress.lastIndexOf(":") + 1), 16);
}

/**
 * The uid owning the client end of `socket` (accepted on loopback); null where the kernel does not
 * say (no /proc, as off Linux), undefined where it should but the connection is not in its table.
 */
export async function loopbackPeerUid(socket: Socket): Promise<number | null | undefined> {
  const tables = await Promise.all(["/proc/net/tcp", "/proc/net/tcp6"].map((f) => readFile(f, "utf8").catch(() => undefined)));
  if (tables.every((t) => t === undefined)) return null;
  for (const table of tables) {
    for (const line of (table ?? "").split("\n").slice(1)) {
      const cols = line.trim().split(/\s+/);
      // the client's socket: its local port is our peer's port, its remote port is ours
      if (cols.length > 7 && port(cols[1] as string) === socket.remotePort && port(cols[2] as string) === socket.localPort) {
        return Number(cols[7]);
      }
    }
  }
  return undefined;
}

/** Whether a loopback connection comes from this process's own user (true where the OS cannot tell). */
export async function fromOwnUser(socket: Socket): Promise<boolean> {
  const uid = await loopbackPeerUid(socket);
  return uid === null || uid === process.getuid?.();
}
