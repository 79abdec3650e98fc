// Decodes Sparkplug B payloads with Eclipse Tahu's sparkplug-payload (not with the project's own code).
// stdin: one base64 payload per line; stdout: one JSON document per line, in the same order
// ({"error": "..."} for a payload that does not decode). 64-bit integers become numbers, bytes base64.
"use strict";
const readline = require("readline");
const Long = require("long");
const sparkplug = require("sparkplug-payload").get("spBv1.0");

function plain(value) {
  if (Long.isLong(value)) return value.toNumber();
  if (value instanceof Uint8Array) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map(plain);
  if (value !== null && typeof value === "object") {
    const out = {};
    for (const [k, v] of Object.entries(value)) out[k] = plain(v);
    return out;
  }
  return value;
}

const lines = readline.createInterface({ input: process.stdin, terminal: false });
lines.on("line", (line) => {
  let doc;
  try {
    doc = plain(sparkplug.decodePayload(Buffer.from(line.trim(), "base64")));
  } catch (err) {
    doc = { error: String(err) };
  }
  process.stdout.write(JSON.stringify(doc) + "\n");
});
