// Drive the official openai Node SDK against Sluice; print one JSON object of what it saw.
// Usage: node sdk_check.mjs http://127.0.0.1:PORT/v1
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.argv[2], apiKey: "sk-client-side-unused", maxRetries: 0 });
const messages = [{ role: "user", content: "Hello from Node" }];
const results = {};

async function errorOf(fn) {
  try {
    await fn();
    return null;
  } catch (err) {
    return { class: err.constructor.name, status: err.status ?? null, code: err.code ?? null };
  }
}

const completion = await client.chat.completions.create({ model: "gpt-4o", messages });
results.completion = {
  text: completion.choices[0].message.content,
  finish_reason: completion.choices[0].finish_reason,
  usage: completion.usage,
};

let text = "";
let usageChunks = 0;
for await (const chunk of await client.chat.completions.create({ model: "gpt-4o", messages, stream: true })) {
  text += chunk.choices[0]?.delta?.content ?? "";
  if (chunk.usage) usageChunks += 1;
}
results.stream = { text, usageChunks };

let usage = null;
const withUsage = await client.chat.completions.create({
  model: "gpt-4o", messages, stream: true, stream_options: { include_usage: true },
});
for await (const chunk of withUsage) {
  if (chunk.usage) usage = chunk.usage;
}
results.streamUsage = usage;

results.models = (await client.models.list()).data.map((m) => m.id);
results.notFound = await errorOf(() => client.chat.completions.create({ model: "no-such-model", messages }));
results.badRequest = await errorOf(() => client.chat.completions.create({ model: "gpt-4o", messages: [] }));
results.rateLimited = await errorOf(() =>
  client.chat.completions.create({ model: "gpt-4o", messages, sim: { fault: "rate_limit" } }),
);
results.midStream = await errorOf(async () => {
  const stream = await client.chat.completions.create({
    model: "gpt-4o", messages, stream: true, sim: { tokens: 6, fault: "error_event" },
  });
  for await (const _ of stream) {
    // drain until the SDK raises the error event
  }
});

console.log(JSON.stringify(results));
