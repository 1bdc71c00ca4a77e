/**
 * Reading a stream of server-sent events (the OpenAI streaming responses of llama-server and of
 * the coordinator): text goes in as it arrives, the data of each whole event comes out. Events end
 * at a blank line; an event's `data:` lines are joined with newlines, other fields (`event:`,
 * `id:`, comments) are skipped, and an event without data yields nothing. Lines end in `\n`, as
 * both servers send them. The node reads its engine with it on the per-token path, so it does no
 * more than split strings.
 */
export class SseDecoder {
  private buffered = "";

  /** The data of each event completed by `text`, in order; a partial event waits for the next call. */
  push(text: string): string[] {
    this.buffered += text;
    const out: string[] = [];
    let cut = this.buffered.indexOf("\n\n");
    while (cut >= 0) {
      const data = eventData(this.buffered.slice(0, cut));
      if (data !== undefined) out.push(data);
      this.buffered = this.buffered.slice(cut + 2);
      cut = this.buffered.indexOf("\n\n");
    }
    return out;
  }
}

function eventData(event: string): string | undefined {
  let data: string | undefined;
  for (const line of event.split("\n")) {
    if (!line.startsWith("data:")) continue;
    // one space after the colon belongs to the field syntax, not to the data
    const value = line.slice(line[5] === " " ? 6 : 5);
    data = data === undefined ? value : `${data}\n${value}`;
  }
  return data;
}
