/** Small pieces every page uses. */
import type { ReactNode } from "react";

/** A failure, said where it happened and announced to screen readers; nothing when there is none. */
export function Alert({ error }: { error: Error | string | null | undefined }) {
  if (!error) return null;
  return (
    <p className="error" role="alert">
      {typeof error === "string" ? error : error.message}
    </p>
  );
}

/** One labelled number of a `<dl className="figures">`. */
export function Figure({ label, testId, children }: { label: string; testId?: string; children: ReactNode }) {
  return (
    <div>
      <dt>{label}</dt>
      <dd data-testid={testId}>{children}</dd>
    </div>
  );
}
