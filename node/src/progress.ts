/**
 * Progress display for long steps (engine build, model download). On a TTY one
 * line is redrawn in place; elsewhere a line is printed per 10% step so logs
 * stay short.
 */
export interface Progress {
  /** fraction in [0, 1], or undefined when the total is unknown */
  update(fraction: number | undefined, detail?: string): void;
  done(message: string): void;
}

export type ProgressFactory = (label: string) => Progress;

export const silentProgress: ProgressFactory = () => ({ update() {}, done() {} });

export function terminalProgress(stream: NodeJS.WriteStream = process.stderr): ProgressFactory {
  return (label) => {
    let lastDecile = -1;
    const started = Date.now();
    return {
      update(fraction, detail = "") {
        const pct = fraction === undefined ? "" : `${Math.floor(fraction * 100)}%`;
        if (stream.isTTY) {
          const line = `${label} ${pct} ${detail}`.slice(0, (stream.columns || 80) - 1);
          stream.write(`\r\x1b[2K${line}`);
          return;
        }
        const decile = fraction === undefined ? lastDecile : Math.floor(fraction * 10);
        if (decile !== lastDecile) {
          lastDecile = decile;
          stream.write(`${label} ${pct} ${detail}\n`);
        }
      },
      done(message) {
        const secs = ((Date.now() - started) / 1000).toFixed(1);
        stream.write(`${stream.isTTY ? "\r\x1b[2K" : ""}${label}: ${message} (${secs} s)\n`);
      },
    };
  };
}
