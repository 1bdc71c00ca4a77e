/**
 * Contribute: this tab becomes a node of the network (docs/browser-node.md). The wallet signs
 * once a delegation to a key made in the tab; the tab fetches a small model, checks it, and
 * serves jobs; what it earns goes to the wallet (the Earnings page). The owner decides: Start and
 * Stop, how many threads, pause while the page is in view, and never on battery. The node lives
 * as long as the tab (navigating between the portal's pages keeps it serving).
 */
import type { LedgerResponse } from "@sharedllm/protocol";
import { useEffect, useState } from "react";
import type { TypedDataDefinition } from "viem";
import { useConnection, useSignTypedData } from "wagmi";
import { BrowserNode, type NodeStatus } from "../contribute/browserNode.js";
import { Alert, Figure } from "../ui.js";
import { credits, shortAddress, walletError } from "../wallet.js";

/** The tab's one node and who watches it. */
let node: BrowserNode | undefined;
let latest: NodeStatus = { state: "idle", jobsServed: 0, activeJobs: 0, tokensPerSecond: 0, credits: 0n };
const watchers = new Set<(s: NodeStatus) => void>();
function useNodeStatus(): NodeStatus {
  const [s, set] = useState(latest);
  useEffect(() => {
    watchers.add(set);
    return () => void watchers.delete(set);
  }, []);
  return s;
}
const publish = (s: NodeStatus) => {
  latest = s;
  for (const w of watchers) w(s);
};

/** The join token of the site's join link (`/contribute#token=…`): in the fragment, so it never reaches a server's log. */
function joinToken(): string | undefined {
  return new URLSearchParams(location.hash.slice(1)).get("token") ?? undefined;
}

interface BatteryLike extends EventTarget {
  charging: boolean;
}

export function ContributePage({ ledger }: { ledger: LedgerResponse }) {
  const { address, isConnected } = useConnection();
  const { signTypedDataAsync } = useSignTypedData();
  const status = useNodeStatus();
  const cores = navigator.hardwareConcurrency || 1;
  // owner-first: a core is left to the owner unless they give it (on a busy machine, more threads than free cores spin and slow down)
  const [threads, setThreads] = useState(Math.max(1, cores - 1));
  const [webgpu, setWebgpu] = useState(true);
  const [pauseWhileVisible, setPauseWhileVisible] = useState(false);
  const [visible, setVisible] = useState(document.visibilityState === "visible");
  const [onBattery, setOnBattery] = useState(false);
  const [error, setError] = useState<string>();
  const running = ["starting", "downloading", "loading", "serving", "paused"].includes(status.state);

  useEffect(() => {
    const onChange = () => setVisible(document.visibilityState === "visible");
    document.addEventListener("visibilitychange", onChange);
    return () => document.removeEventListener("visibilitychange", onChange);
  }, []);
  useEffect(() => {
    // where the browser says (Chromium's Battery Status API): no serving on battery
    const getBattery = (navigator as Navigator & { getBattery?: () => Promise<BatteryLike> }).getBattery;
    if (!getBattery) return;
    let battery: BatteryLike | undefined;
    const onChange = () => setOnBattery(battery ? !battery.charging : false);
    getBattery.call(navigator).then((b) => {
      battery = b;
      onChange();
      b.addEventListener("chargingchange", onChange);
    });
    return () => battery?.removeEventListener("chargingchange", onChange);
  }, []);
  const live = status.state === "serving" || status.state === "paused";
  useEffect(() => {
    if (!live) return;
    if (onBattery) node?.setAccepting(false, "on_battery");
    else if (pauseWhileVisible && visible) node?.setAccepting(false, "owner_busy");
    else node?.setAccepting(true, "resumed");
  }, [onBattery, pauseWhileVisible, visible, live]);

  const start = async () => {
    if (!address) return;
    setError(undefined);
    node = new BrowserNode(publish);
    await node.start({
      wallet: address,
      chainId: ledger.chainId,
      signDelegation: (typed) =>
        signTypedDataAsync(typed as TypedDataDefinition).catch((err) => Promise.reject(new Error(walletError(err)))),
      joinToken: joinToken(),
      threads,
      webgpu,
    });
  };
  const stop = () => void node?.stop();

  const adapter = status.browser?.adapter;
  return (
    <section aria-labelledby="contribute-heading">
      <h2 id="contribute-heading">Serve from this tab</h2>
      <p>
        This tab can serve the network's jobs with a small model, in your browser, and earn credits for your wallet. Your wallet signs once
        to let this tab sign its work for a day; closing the tab or pressing Stop takes it out at once.
      </p>
      {!isConnected && <p>Connect your wallet to contribute.</p>}
      <fieldset disabled={running}>
        <legend>Throttle</legend>
        <label>
          Threads{" "}
          <select value={threads} onChange={(e) => setThreads(Number(e.target.value))}>
            {Array.from({ length: cores }, (_, i) => i + 1).map((n) => (
              <option key={n} value={n}>
                {n}
              </option>
            ))}
          </select>
        </label>
        <label>
          <input type="checkbox" checked={webgpu} onChange={(e) => setWebgpu(e.target.checked)} /> Use the GPU (WebGPU) where it can run
        </label>
      </fieldset>
      <label>
        <input type="checkbox" checked={pauseWhileVisible} onChange={(e) => setPauseWhileVisible(e.target.checked)} /> Pause while this page
        is in view
      </label>
      <p>
        {running ? (
          <button type="button" onClick={stop}>
            Stop
          </button>
        ) : (
          <button type="button" disabled={!isConnected} onClick={() => start().catch((err: Error) => setError(err.message))}>
            Start
          </button>
        )}
      </p>
      <p role="status" data-testid="node-state" data-state={status.state}>
        {status.message ?? "Not serving."}
      </p>
      <Alert error={status.state === "failed" ? status.message : error} />
      <dl className="figures">
        <Figure label="Model" testId="node-model">
          {status.model ?? "—"}
        </Figure>
        <Figure label="Engine" testId="node-engine">
          {status.backend
            ? `${status.backend === "webgpu" ? "WebGPU" : "WebAssembly"}, ${status.threads} thread${status.threads === 1 ? "" : "s"}`
            : "—"}
        </Figure>
        <Figure label="Jobs served" testId="node-jobs">
          {status.jobsServed}
        </Figure>
        <Figure label="Tokens/s" testId="node-speed">
          {status.tokensPerSecond ? status.tokensPerSecond.toFixed(1) : "—"}
        </Figure>
        <Figure label="Credits this session" testId="node-credits">
          {credits(status.credits)}
        </Figure>
      </dl>
      {status.download && status.state === "downloading" && (
        <progress value={status.download.received} max={status.download.total} aria-label="Model download" />
      )}
      {status.browser && (
        <p data-testid="node-browser">
          {adapter
            ? `WebGPU adapter: ${adapter.vendor || "unknown"} ${adapter.architecture}${adapter.isFallbackAdapter ? " (software fallback)" : ""}`
            : "No WebGPU adapter"}
          {status.browser.webgpuUnusable ? `; not used: ${status.browser.webgpuUnusable}` : ""}.{" "}
          {status.browser.crossOriginIsolated ? "Cross-origin isolated: threads available." : "Not cross-origin isolated: one thread."}
          {status.nodeId ? ` Node ${shortAddress(status.nodeId)}.` : ""}
        </p>
      )}
    </section>
  );
}
