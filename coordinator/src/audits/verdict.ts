/** Placeholder verdict until the calibrated one lands: greedy jobs must take the auditor's top token (near-ties aside); sampled ones a ranked token. */
import type { Judge } from "./audits.js";

export const judge: Judge = ({ request, scores }) => {
  const greedy = request.temperature === 0;
  for (const s of scores) {
    if (s.rank === null) return { pass: false, reason: `position ${s.position}: the claimed token is not among the auditor's top choices` };
    if (greedy && s.rank > 1 && s.topLogprob - (s.logprob ?? -Infinity) > 1) {
      return { pass: false, reason: `position ${s.position}: not the greedy choice` };
    }
  }
  return { pass: true };
};
