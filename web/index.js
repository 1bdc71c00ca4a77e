// The portal's build (`npm run build -w @sharedllm/web`), which the coordinator serves at `/`.
import { join } from "node:path";

export const webRoot = join(import.meta.dirname, "dist");
