// The official TypeScript SDK v2 client (@modelcontextprotocol/client) in auto mode,
// run as a script by the tests:
//
//   tests/npm/node_modules/node/bin/node tests/modern_clients/ts_client.mjs URL [--token TOKEN]
//
// `versionNegotiation: { mode: 'auto' }` (the SDK's default is 'legacy') makes
// connect() POST `server/discover` at 2026-07-28 first, with the `_meta` envelope
// and the MCP-Protocol-Version / Mcp-Method headers; a DiscoverResult naming
// 2026-07-28 selects the modern era, anything else short of an outage, a 401/403 or a
// 5xx falls back to the plain `initialize` handshake. The negotiated version and era
// are read back with getNegotiatedProtocolVersion() and getProtocolEra().
//
// It then exercises tools, progress, resources, prompts and an elicitation round
// trip (at 2026-07-28 an `input_required` result the client fulfils through the
// `elicitation/create` handler and retries; on the session era a server-to-client
// `elicitation/create` request to the same handler), and prints ONE JSON line with
// the same fields as py_client.py. Any failure exits non-zero with the error on
// stderr and prints nothing on stdout.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

// The SDK lives in tests/npm/node_modules, not on this script's resolution path.
const SDK = new URL('../npm/node_modules/@modelcontextprotocol/client/', import.meta.url);
const { Client, StreamableHTTPClientTransport } = await import(new URL('dist/index.mjs', SDK));
const SDK_VERSION = JSON.parse(readFileSync(new URL('package.json', SDK), 'utf8')).version;

// What the scripts call on the conformance fixture (and on native_server.py).
const SIMPLE_TOOL = 'test_simple_text';
const PROGRESS_TOOL = 'test_tool_with_progress';
const ELICITATION_TOOL = 'test_elicitation';
const ELICITATION_MESSAGE = 'Who are you? (typescript sdk v2)';
const RESOURCE_URI = 'test://static-text';
const PROMPT = 'test_simple_prompt';
// The elicitation handler accepts with exactly this content.
const ELICITED = { username: 'modern-typescript', email: 'typescript@example.test' };
const TIMEOUT_MS = 30_000; // for any one request, and for the connect-time probe

const texts = (content) =>
  content.filter((c) => c.type === 'text').map((c) => c.text).join('');

async function run(url, token) {
  const client = new Client(
    { name: 'mcp-bridge-tests-ts-client', version: '1.0.0' },
    {
      capabilities: { elicitation: { form: {} } },
      versionNegotiation: { mode: 'auto' },
    },
  );

  const elicitations = [];
  client.setRequestHandler('elicitation/create', async (request) => {
    const { message, requestedSchema } = request.params;
    elicitations.push({ message, fields: Object.keys(requestedSchema.properties).sort() });
    return { action: 'accept', content: { ...ELICITED } };
  });

  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: token ? { headers: { Authorization: `Bearer ${token}` } } : undefined,
  });
  const options = { timeout: TIMEOUT_MS };
  await client.connect(transport, options);
  try {
    const protocolVersion = client.getNegotiatedProtocolVersion();
    const era = client.getProtocolEra();
    const tools = (await client.listTools(undefined, options)).tools.map((t) => t.name).sort();

    const simple = await client.callTool({ name: SIMPLE_TOOL, arguments: {} }, options);
    if (simple.isError) throw new Error(`${SIMPLE_TOOL}: ${JSON.stringify(simple)}`);

    const progress = [];
    const withProgress = await client.callTool(
      { name: PROGRESS_TOOL, arguments: {} },
      {
        ...options,
        onprogress: ({ progress: value, total, message }) =>
          progress.push({ progress: value, total: total ?? null, message: message ?? null }),
      },
    );
    if (withProgress.isError) throw new Error(`${PROGRESS_TOOL}: ${JSON.stringify(withProgress)}`);
    const progressSeen = [...progress]; // what arrived before callTool resolved

    const resources = (await client.listResources(undefined, options)).resources
      .map((r) => r.uri)
      .sort();
    const read = await client.readResource({ uri: RESOURCE_URI }, options);
    const resourceText = read.contents.map((c) => c.text ?? '').join('');

    const prompts = (await client.listPrompts(undefined, options)).prompts.map((p) => p.name).sort();
    const prompt = await client.getPrompt({ name: PROMPT }, options);
    const promptText = prompt.messages
      .filter((m) => m.content.type === 'text')
      .map((m) => m.content.text)
      .join('');

    const elicited = await client.callTool(
      { name: ELICITATION_TOOL, arguments: { message: ELICITATION_MESSAGE } },
      options,
    );
    if (elicited.isError) throw new Error(`${ELICITATION_TOOL}: ${JSON.stringify(elicited)}`);

    return {
      client: `typescript-sdk-${SDK_VERSION}`,
      protocol_version: protocolVersion,
      era,
      tools,
      simple_text: texts(simple.content),
      progress: progressSeen,
      progress_result: texts(withProgress.content),
      resources,
      resource_text: resourceText,
      prompts,
      prompt_text: promptText,
      elicitation_message: ELICITATION_MESSAGE,
      elicited_content: ELICITED,
      elicitations,
      elicitation_result: texts(elicited.content),
    };
  } finally {
    // A session-era connection holds an Mcp-Session-Id: end it (DELETE) like the
    // Python SDK does on exit. The 2026-07-28 era has no session (sessionId stays unset).
    if (transport.sessionId !== undefined) await transport.terminateSession();
    await client.close();
  }
}

const { values, positionals } = parseArgs({
  options: { token: { type: 'string' } },
  allowPositionals: true,
});
if (positionals.length !== 1) {
  console.error('usage: ts_client.mjs URL [--token TOKEN]');
  process.exit(2);
}
try {
  const result = await run(positionals[0], values.token);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
} catch (error) {
  console.error(error);
  process.exit(1);
}
