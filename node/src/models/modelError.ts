/**
 * The error of the model store and its sources: a model that cannot be pulled, found or served as
 * asked. Its message says what to do instead.
 */
export class ModelError extends Error {
  override name = "ModelError";
}
