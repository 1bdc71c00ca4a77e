/**
 * The error of the model store and its sources: a model that cannot be pulled, found or served as
 * asked. Its message says what to do instead.
 */
import { SharedLLMError } from "../errors.js";

export class ModelError extends SharedLLMError {
  override name = "ModelError";
  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super("model", message, options);
  }
}
