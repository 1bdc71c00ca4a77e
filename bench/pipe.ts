/**
 * A bare TCP relay (Nagle off, no parsing) in its own process: the floor cost of
 * any extra process on the token path, measured beside the coordinator.
 * Usage: tsx bench/pipe.ts <targetPort>; prints the port it listens on.
 */
import { connect, createServer } from "node:net";

const target = Number(process.argv[2]);
const server = createServer((inbound) => {
  inbound.setNoDelay(true);
  const outbound = connect(target, "127.0.0.1", () => outbound.setNoDelay(true));
  inbound.pipe(outbound).pipe(inbound);
  const close = () => {
    inbound.destroy();
    outbound.destroy();
  };
  inbound.on("error", close).on("close", close);
  outbound.on("error", close).on("close", close);
});
server.listen(0, "127.0.0.1", () => {
  const addr = server.address();
  process.stdout.write(`${typeof addr === "object" && addr ? addr.port : 0}\n`);
});
