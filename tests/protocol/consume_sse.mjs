// Follows one job's events over the gateway's SSE endpoint and validates every event against
// docs/schemas/event.json, with nothing but Node's standard library: a program in another language
// that only read docs/protocol.md. Prints one JSON line: {"events": N, "types": [...], "seqs_in_order": true}.
//   node consume_sse.mjs <events url> <token> <event.json path>
import { readFileSync } from "node:fs";

const [url, token, schemaPath] = process.argv.slice(2);
const root = JSON.parse(readFileSync(schemaPath, "utf8"));

function resolve(ref) {
  if (!ref.startsWith("#/")) throw new Error("only local $refs: " + ref);
  return ref.slice(2).split("/").reduce((node, key) => node[key], root);
}

const TYPES = {
  string: (v) => typeof v === "string",
  integer: (v) => Number.isInteger(v),
  number: (v) => typeof v === "number",
  boolean: (v) => typeof v === "boolean",
  null: (v) => v === null,
  array: (v) => Array.isArray(v),
  object: (v) => v !== null && typeof v === "object" && !Array.isArray(v),
};

// The subset of JSON Schema the generated schemas use; returns a list of problems.
function check(schema, value, path) {
  if (schema === true || schema === undefined) return [];
  if (schema === false) return [`${path}: not allowed`];
  if (schema.$ref) return check(resolve(schema.$ref), value, path);
  const problems = [];
  if (schema.type) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => TYPES[t](value))) return [`${path}: expected ${types.join("|")}`];
  }
  if ("const" in schema && JSON.stringify(schema.const) !== JSON.stringify(value)) problems.push(`${path}: not ${schema.const}`);
  if (schema.enum && !schema.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) problems.push(`${path}: not in enum`);
  if (schema.anyOf && !schema.anyOf.some((s) => check(s, value, path).length === 0)) problems.push(`${path}: matches no anyOf`);
  if (schema.oneOf && schema.oneOf.filter((s) => check(s, value, path).length === 0).length !== 1) problems.push(`${path}: not exactly one oneOf`);
  for (const s of schema.allOf || []) problems.push(...check(s, value, path));
  if (typeof value === "string") {
    if (schema.minLength !== undefined && [...value].length < schema.minLength) problems.push(`${path}: too short`);
    if (schema.maxLength !== undefined && [...value].length > schema.maxLength) problems.push(`${path}: too long`);
    if (schema.pattern && !new RegExp(schema.pattern, "u").test(value)) problems.push(`${path}: pattern`);
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) problems.push(`${path}: below minimum`);
    if (schema.maximum !== undefined && value > schema.maximum) problems.push(`${path}: above maximum`);
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) problems.push(`${path}: not above`);
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) problems.push(`${path}: not below`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) problems.push(`${path}: too few items`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems) problems.push(`${path}: too many items`);
    if (schema.items) value.forEach((item, i) => problems.push(...check(schema.items, item, `${path}[${i}]`)));
  }
  if (TYPES.object(value) && (schema.properties || schema.required || "additionalProperties" in schema)) {
    const props = schema.properties || {};
    for (const name of schema.required || []) if (!(name in value)) problems.push(`${path}.${name}: missing`);
    for (const [name, item] of Object.entries(value)) {
      if (name in props) problems.push(...check(props[name], item, `${path}.${name}`));
      else if (schema.additionalProperties === false) problems.push(`${path}.${name}: unknown field`);
      else if (typeof schema.additionalProperties === "object") problems.push(...check(schema.additionalProperties, item, `${path}.${name}`));
    }
  }
  return problems;
}

const response = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
if (!response.ok) throw new Error(`HTTP ${response.status}`);
const decoder = new TextDecoder();
let buffer = "";
const events = [];
for await (const chunk of response.body) {
  buffer += decoder.decode(chunk, { stream: true });
  let cut;
  while ((cut = buffer.indexOf("\n\n")) >= 0) {
    const frame = buffer.slice(0, cut);
    buffer = buffer.slice(cut + 2);
    const lines = frame.split("\n");
    const data = lines.filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
    if (!data) continue; // the retry prelude, ping comments
    const name = (lines.find((l) => l.startsWith("event: ")) || "").slice(7);
    const id = (lines.find((l) => l.startsWith("id: ")) || "").slice(4);
    const event = JSON.parse(data);
    const problems = check(root, event, "event");
    if (problems.length) throw new Error(`event ${data.slice(0, 200)} is not valid: ${problems.join("; ")}`);
    if (event.type !== name || String(event.seq) !== id) throw new Error(`frame header ${name}/${id} != ${event.type}/${event.seq}`);
    events.push(event);
  }
}
const seqs = events.map((e) => e.seq);
const terminal = events.filter((e) => ["done", "error", "cancelled"].includes(e.type));
console.log(JSON.stringify({
  events: events.length,
  types: events.map((e) => e.type),
  seqs_in_order: seqs.every((s, i) => i === 0 || s > seqs[i - 1]),
  terminal: terminal.length,
  result_status: terminal.length ? terminal[0].result?.status ?? null : null,
}));
