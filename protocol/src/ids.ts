/** Branded identities: a NodeId is never mixed up with a JobId or a ModelId. */
declare const brand: unique symbol;
export type Brand<T, B extends string> = T & { readonly [brand]: B };

export type NodeId = Brand<string, "NodeId">;
export type JobId = Brand<string, "JobId">;
export type ModelId = Brand<string, "ModelId">;

export const asNodeId = (s: string) => s as NodeId;
export const asJobId = (s: string) => s as JobId;
export const asModelId = (s: string) => s as ModelId;
