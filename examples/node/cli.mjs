#!/usr/bin/env node
// The app API from the command line (see README.md):
//
//   node cli.mjs link CONNECTION_ID [--return-to URL] [--ttl SECONDS]
//   node cli.mjs token CONNECTION_ID          (the answer, access_token redacted)
//   node cli.mjs company CONNECTION_ID        (GET /companies/current with the token)
//   node cli.mjs state CONNECTION_ID
//
// Prints the answer as JSON on stdout. On an error prints
// {"error", "message", "retry_at"} on stderr and exits 1 (2 for usage).
// Never prints a token.

import { parseArgs } from "node:util";

import { connectionState, createLink, getToken, InvoicedConnectError } from "./invoiced-connect.mjs";

const USAGE = `usage: node cli.mjs link CONNECTION_ID [--return-to URL] [--ttl SECONDS]
       node cli.mjs token CONNECTION_ID
       node cli.mjs company CONNECTION_ID
       node cli.mjs state CONNECTION_ID

Needs LINKS_FUNCTION_NAME, TOKENS_FUNCTION_NAME, CONNECTION_STATE_FUNCTION_NAME
(the stack's outputs), a region (AWS_REGION) and AWS credentials.`;

class UsageError extends Error {}

function redacted(answer) {
  return { ...answer, access_token: "[redacted]" };
}

/** GET {api_url}/companies/current with a fresh token; once more with a new one if Invoiced answers 401. */
async function currentCompany(connectionId) {
  let token = await getToken({ connectionId });
  for (let attempt = 0; ; attempt += 1) {
    if (typeof token.api_url !== "string" || !/^https?:\/\//.test(token.api_url)) {
      throw new Error("the token answer has no http(s) api_url");
    }
    const url = `${token.api_url.replace(/\/+$/, "")}/companies/current`;
    const response = await fetch(url, {
      headers: { Authorization: `Bearer ${token.access_token}`, Accept: "application/json" },
      redirect: "error",
      signal: AbortSignal.timeout(30_000),
    });
    if (response.status === 401 && attempt === 0) {
      await response.body?.cancel();
      token = await getToken({ connectionId, rejectedVersion: token.version });
      continue;
    }
    if (!response.ok) {
      await response.body?.cancel();
      throw new Error(`GET ${url} answered ${response.status}`);
    }
    const company = await response.json();
    return { id: company.id, name: company.name };
  }
}

async function run(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      "return-to": { type: "string" },
      ttl: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const [command, connectionId, ...rest] = positionals;
  if (!connectionId || rest.length) throw new UsageError(USAGE);
  if (command !== "link" && (values["return-to"] !== undefined || values.ttl !== undefined)) {
    throw new UsageError(`--return-to and --ttl are options of link only\n${USAGE}`);
  }

  let answer;
  switch (command) {
    case "link": {
      let ttlSeconds;
      if (values.ttl !== undefined) {
        ttlSeconds = Number(values.ttl);
        if (!Number.isInteger(ttlSeconds)) throw new UsageError(`--ttl: ${values.ttl} is not a whole number of seconds`);
      }
      answer = await createLink({ connectionId, returnTo: values["return-to"], ttlSeconds });
      break;
    }
    case "token":
      answer = redacted(await getToken({ connectionId }));
      break;
    case "company":
      answer = await currentCompany(connectionId);
      break;
    case "state":
      answer = await connectionState(connectionId);
      break;
    default:
      throw new UsageError(USAGE);
  }
  console.log(JSON.stringify(answer, null, 2));
}

try {
  await run(process.argv.slice(2));
} catch (error) {
  if (error instanceof UsageError || String(error?.code).startsWith("ERR_PARSE_ARGS")) {
    console.error(error.message);
    process.exitCode = 2;
  } else {
    const code = error instanceof InvoicedConnectError ? error.code : (error?.name ?? "error");
    const report = { error: code, message: String(error?.message ?? error) };
    if (error instanceof InvoicedConnectError && error.retryAt !== null) report.retry_at = error.retryAt;
    console.error(JSON.stringify(report));
    process.exitCode = 1;
  }
}
