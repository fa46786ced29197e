// A small client of the invoiced-connect app API: three Lambda functions
// invoked with Lambda Invoke and IAM (never over HTTP).
//
//   import { createLink, getToken, connectionState } from "./invoiced-connect.mjs";
//
//   const { url } = await createLink({ connectionId: "acme-7", returnTo: "https://app.example.com/done" });
//   const { access_token, api_url } = await getToken({ connectionId: "acme-7" });
//   const { connection } = await connectionState("acme-7");
//
// The functions are named by LINKS_FUNCTION_NAME, TOKENS_FUNCTION_NAME and
// CONNECTION_STATE_FUNCTION_NAME (the stack's LinksFunctionName,
// TokensFunctionName and ConnectionStateFunctionName outputs). The region
// comes from AWS_REGION or AWS_DEFAULT_REGION, credentials from the SDK's
// default chain, and the endpoint from the SDK's own AWS_ENDPOINT_URL_LAMBDA /
// AWS_ENDPOINT_URL handling (only set those to reach a local stack).
//
// Every answer is the function's JSON object as is. An answer with "error"
// throws an InvoicedConnectError with .code (e.g. "needs_reauth",
// "unavailable") and .retryAt (epoch seconds, for "unavailable" and
// "token_rejected"); so does a failed invocation (.code "function_error").
// Neither an error nor its message ever carries a token.

import { InvokeCommand, LambdaClient } from "@aws-sdk/client-lambda";

export const API_VERSION = 1;

const FUNCTION_VARIABLES = {
  links: "LINKS_FUNCTION_NAME",
  tokens: "TOKENS_FUNCTION_NAME",
  connectionState: "CONNECTION_STATE_FUNCTION_NAME",
};

export class InvoicedConnectError extends Error {
  constructor(code, message, { retryAt = null, functionName = null, requestId = null } = {}) {
    super(message);
    this.name = "InvoicedConnectError";
    this.code = code;
    this.retryAt = retryAt;
    this.functionName = functionName;
    this.requestId = requestId;
  }

  /** Whether trying again later can succeed (the other codes need a change first). */
  get transient() {
    return ["unavailable", "token_rejected", "internal_error", "function_error"].includes(this.code);
  }
}

/** The region as the AWS CLI reads it: AWS_REGION, then AWS_DEFAULT_REGION. */
export function regionFrom(env = process.env) {
  return env.AWS_REGION || env.AWS_DEFAULT_REGION || undefined;
}

export class InvoicedConnect {
  /**
   * @param {object} [options]
   * @param {LambdaClient} [options.lambda] a client of your own (default: one for the region in `env`)
   * @param {Record<string, string|undefined>} [options.env] where the function names are read (default: process.env)
   */
  constructor({ lambda, env = process.env } = {}) {
    this.env = env;
    const region = regionFrom(env);
    this.lambda = lambda ?? new LambdaClient(region ? { region } : {});
  }

  /** A connect link for the customer: `{connection_id, url, expires_at}`. */
  createLink({ connectionId, returnTo, ttlSeconds } = {}) {
    return this.#invoke("links", {
      connection_id: connectionId,
      return_to: returnTo,
      ttl_seconds: ttlSeconds,
    });
  }

  /**
   * A valid access token: `{access_token, token_type, expires_at, api_url, tenant_id, version, ...}`.
   * After Invoiced answered 401 to a token, ask again with `rejectedVersion: answer.version`.
   */
  getToken({ connectionId, minValiditySeconds, rejectedVersion } = {}) {
    return this.#invoke("tokens", {
      connection_id: connectionId,
      min_validity_seconds: minValiditySeconds,
      rejected_version: rejectedVersion,
    });
  }

  /** The stored connection: `{connection: {connection_id, status, attention, ...}}`. */
  connectionState(connectionId) {
    return this.#invoke("connectionState", { action: "get", connection_id: connectionId });
  }

  async #invoke(kind, properties) {
    const variable = FUNCTION_VARIABLES[kind];
    const functionName = this.env[variable];
    if (!functionName) {
      throw new InvoicedConnectError("not_configured", `${variable} is not set (the stack's function name)`);
    }
    // Absent options are left out: the functions refuse unknown or null properties.
    const request = { api_version: API_VERSION };
    for (const [name, value] of Object.entries(properties)) {
      if (value !== undefined && value !== null) request[name] = value;
    }
    const response = await this.lambda.send(
      new InvokeCommand({ FunctionName: functionName, Payload: new TextEncoder().encode(JSON.stringify(request)) }),
    );
    const requestId = response.$metadata?.requestId ?? null;
    const text = response.Payload ? new TextDecoder().decode(response.Payload) : "";
    let answer;
    try {
      answer = JSON.parse(text);
    } catch {
      answer = undefined;
    }
    if (response.FunctionError) {
      // Lambda's own error document: {errorType, errorMessage, ...}. Only the type is kept.
      const type = answer && typeof answer.errorType === "string" ? answer.errorType : "unknown error";
      throw new InvoicedConnectError(
        "function_error",
        `${functionName} failed (${response.FunctionError}: ${type}, request ${requestId ?? "unknown"})`,
        { functionName, requestId },
      );
    }
    if (answer === null || typeof answer !== "object" || Array.isArray(answer)) {
      throw new InvoicedConnectError("invalid_answer", `${functionName} did not answer with a JSON object`, {
        functionName,
        requestId,
      });
    }
    if (answer.error !== undefined && answer.error !== null) {
      throw new InvoicedConnectError(String(answer.error), String(answer.message ?? answer.error), {
        retryAt: Number.isInteger(answer.retry_at) ? answer.retry_at : null,
        functionName,
        requestId,
      });
    }
    return answer;
  }
}

let shared;

/** The client the module-level functions use (made on first use, from process.env). */
export function defaultClient() {
  shared ??= new InvoicedConnect();
  return shared;
}

export const createLink = (options) => defaultClient().createLink(options);
export const getToken = (options) => defaultClient().getToken(options);
export const connectionState = (connectionId) => defaultClient().connectionState(connectionId);
