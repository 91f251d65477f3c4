// Checks Kubernetes manifests (YAML, several documents a file; "-" reads stdin) against the
// API of Kubernetes v1.32.0, offline: the models of @kubernetes/client-node 1.1.2, which
// are generated from that release's OpenAPI spec (the `OpenAPI spec version` line of every
// model file), pinned by deploy/k8s/schema/package-lock.json and installed by
// deploy/install-deps.sh into MISEG_K8S_SCHEMA_DIR (default /usr/local/lib/miseg-k8s-schema).
//
// Every object must be a kind the API serves at its apiVersion (from the generated API
// clients' request paths); every field must be one its type declares (an unknown or
// misspelt field fails, as `kubectl apply --validate=strict` would); every value must have
// its declared type (string, integer, boolean, list, map, object, int-or-string); and every
// field the spec marks required must be there.
//
//   node deploy/k8s/check-schema.mjs FILE.yaml...          exit 0: all valid, 1: errors
//   kubectl kustomize deploy/k8s/overlays/single-node | node deploy/k8s/check-schema.mjs -
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const schemaDir = process.env.MISEG_K8S_SCHEMA_DIR || "/usr/local/lib/miseg-k8s-schema";
const clientDir = path.join(schemaDir, "node_modules/@kubernetes/client-node/dist/gen");
if (!fs.existsSync(clientDir)) {
  console.error(`check-schema: ${clientDir} is missing: run deploy/install-deps.sh`);
  process.exit(2);
}
const models = await import(pathToFileURL(path.join(clientDir, "models/all.js")).href);
const yaml = (await import(pathToFileURL(path.join(schemaDir, "node_modules/yaml/dist/index.js")).href)).default;

const specVersion = (fs.readFileSync(path.join(clientDir, "models/V1Pod.js"), "utf8")
  .match(/OpenAPI spec version: (\S+)/) || [, "?"])[1];

// apiVersion -> kind -> model name, from the API clients: each create call POSTs its body
// (serialized as the model) to /api/v1/... or /apis/GROUP/VERSION/....
const kinds = new Map();
for (const file of fs.readdirSync(path.join(clientDir, "apis"))) {
  if (!file.endsWith("Api.js")) continue;
  const source = fs.readFileSync(path.join(clientDir, "apis", file), "utf8");
  // One chunk per request: its path, then its method, then (for a body) its model.
  for (const chunk of source.split("localVarPath = '").slice(1)) {
    const m = chunk.match(/^\/(api|apis\/[^/']+)\/(v[0-9a-z]+)\/[^']*'[^]*?HttpMethod\.(\w+)/);
    const body = chunk.match(/serialize\(body, "(\w+)"/);
    if (!m || m[3] !== "POST" || !body) continue;
    const apiVersion = m[1] === "api" ? m[2] : `${m[1].slice(5)}/${m[2]}`;
    const prefix = m[2][0].toUpperCase() + m[2].slice(1);
    if (!body[1].startsWith(prefix)) continue;
    const kind = body[1].slice(prefix.length);
    if (!kinds.has(apiVersion)) kinds.set(apiVersion, new Map());
    kinds.get(apiVersion).set(kind, body[1]);
  }
}

// Required fields: the generated TypeScript declares them without '?'.
const requiredCache = new Map();
function requiredOf(model) {
  if (!requiredCache.has(model)) {
    const file = path.join(clientDir, "models", `${model}.d.ts`);
    const required = [];
    if (fs.existsSync(file)) {
      for (const m of fs.readFileSync(file, "utf8").matchAll(/^ {4}'([^']+)': /gm)) required.push(m[1]);
    }
    requiredCache.set(model, required);
  }
  return requiredCache.get(model);
}

function typeName(value) {
  return Array.isArray(value) ? "list" : value === null ? "null" : typeof value;
}

function check(value, type, where, errors) {
  if (value === null || value === undefined) return;  // an explicit null is "unset"
  let m;
  if ((m = type.match(/^Array<(.+)>$/))) {
    if (!Array.isArray(value)) return errors.push(`${where}: expected a list, got ${typeName(value)}`);
    value.forEach((item, i) => check(item, m[1], `${where}[${i}]`, errors));
  } else if ((m = type.match(/^\{ \[key: string\]: (.+); \}$/))) {
    if (typeName(value) !== "object") return errors.push(`${where}: expected a map, got ${typeName(value)}`);
    for (const [k, v] of Object.entries(value)) check(v, m[1], `${where}.${k}`, errors);
  } else if (type === "string" || type === "Date") {
    if (typeof value !== "string") errors.push(`${where}: expected a string, got ${typeName(value)} ${JSON.stringify(value)}`);
  } else if (type === "number") {
    if (typeof value !== "number") errors.push(`${where}: expected a number, got ${typeName(value)} ${JSON.stringify(value)}`);
  } else if (type === "boolean") {
    if (typeof value !== "boolean") errors.push(`${where}: expected true or false, got ${typeName(value)} ${JSON.stringify(value)}`);
  } else if (type === "IntOrString") {
    if (typeof value !== "string" && !Number.isInteger(value)) errors.push(`${where}: expected an integer or a string, got ${typeName(value)}`);
  } else if (type === "any" || type === "object") {
    // free-form (e.g. a CRD's schema): anything goes
  } else if (models[type] && models[type].attributeTypeMap) {
    if (typeName(value) !== "object") return errors.push(`${where}: expected an object (${type}), got ${typeName(value)}`);
    const fields = new Map(models[type].attributeTypeMap.map((a) => [a.baseName, a]));
    for (const [k, v] of Object.entries(value)) {
      const field = fields.get(k);
      if (!field) {
        errors.push(`${where}: unknown field "${k}" (${type} has ${[...fields.keys()].join(", ")})`);
        continue;
      }
      let fieldType = field.type;
      if (field.format === "int32" || field.format === "int64") {
        if (typeof v === "number" && !Number.isInteger(v)) errors.push(`${where}.${k}: expected an integer, got ${v}`);
      }
      check(v, fieldType, `${where}.${k}`, errors);
    }
    for (const k of requiredOf(type)) {
      if (value[k] === undefined || value[k] === null) errors.push(`${where}: required field "${k}" is missing`);
    }
  } else {
    errors.push(`${where}: the checker does not know the type ${type}`);
  }
}

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: check-schema.mjs FILE.yaml... (- for stdin)");
  process.exit(2);
}
let objects = 0;
const errors = [];
for (const file of files) {
  const text = fs.readFileSync(file === "-" ? 0 : file, "utf8");
  const documents = yaml.parseAllDocuments(text);
  documents.forEach((doc, index) => {
    const label = `${file === "-" ? "stdin" : file}#${index + 1}`;
    if (doc.errors.length > 0) return errors.push(`${label}: YAML: ${doc.errors[0].message}`);
    const object = doc.toJS();
    if (object === null || object === undefined) return;  // an empty document
    ++objects;
    const { apiVersion, kind } = object;
    const name = `${label} ${kind}/${object.metadata?.name ?? "?"}`;
    const model = kinds.get(apiVersion)?.get(kind);
    if (!model) {
      const served = [...kinds.entries()].filter(([, k]) => k.has(kind)).map(([v]) => v);
      return errors.push(`${name}: Kubernetes ${specVersion} serves no ${kind} in ${apiVersion}` +
        (served.length ? ` (it does in ${served.join(", ")})` : ""));
    }
    const found = [];
    check(object, model, kind, found);
    for (const e of found) errors.push(`${name}: ${e}`);
  });
}
for (const e of errors) console.log(e);
if (errors.length > 0) {
  console.log(`${errors.length} error(s) in ${objects} object(s) checked against Kubernetes ${specVersion}`);
  process.exit(1);
}
if (objects === 0) {
  console.log("no objects found");
  process.exit(1);
}
console.log(`${objects} object(s) valid against Kubernetes ${specVersion}`);
