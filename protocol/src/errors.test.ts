import { describe, expect, it } from "vitest";
import { ApiError, errorBody } from "./errors.js";

describe("ApiError from a response body", () => {
  it("is the error the coordinator sent: code, status, message, param", () => {
    const sent = new ApiError("insufficient_credits", "deposit more credits", { param: "max_tokens" });
    const got = ApiError.fromBody(JSON.parse(JSON.stringify(sent.toBody())));
    expect(got).toBeInstanceOf(ApiError);
    expect({ code: got?.code, status: got?.status, message: got?.message, param: got?.param }).toEqual({
      code: "insufficient_credits",
      status: 402,
      message: "deposit more credits",
      param: "max_tokens",
    });
  });

  it("is undefined for a body that is not one of the catalog's", () => {
    for (const body of [undefined, null, "Bad Gateway", {}, { error: "x" }, { error: { message: "m", code: "teapot" } }]) {
      expect(ApiError.fromBody(body)).toBeUndefined();
    }
    expect(ApiError.fromBody(errorBody("not_found", "no route"))?.status).toBe(404);
  });
});
