// Checks Kubernetes objects against the API's schemas, offline.
//
//   node validate.mjs < objects.json     # a JSON array of objects
//
// The schemas are those of the npm package kubernetes-models (pinned in
// package.json beside this file; its version 5.1.0 holds Kubernetes 1.34's
// API), compiled into one validator per kind: types, required fields,
// enums and formats, as kubeconform checks them.
//
// Strict as well: a field that the kind's schema does not define (a typo,
// a field from another API version) is an error, as `kubectl apply
// --validate=strict` makes it. The compiled validators do not report those,
// so each object is wrapped in a Proxy that records which fields the
// validator reads: it reads every field its schema defines, so a field it
// never reads is not in the schema. Maps (labels, annotations, data) are
// read key by key and pass.
//
// Prints one line per object ("ok Kind/name" or the errors) and exits 1 when
// any object fails, 2 when the input cannot be read.
import { readFileSync } from "node:fs";

import { formats } from "@kubernetes-models/validate";

// Base64 ("byte": Secret data) may hold line breaks: the API server decodes
// it as Go does, skipping them, and kustomize wraps long values at 70
// columns. The package's pattern allows none; the validators read this
// object when they run, so the check is widened here.
const isBase64 = formats.byte.validate;
formats.byte.validate = (value) => isBase64(value.replace(/[\r\n]/g, ""));

// "apps/v1" + "StatefulSet" -> the model's module; core ("v1") has no group.
async function modelFor(apiVersion, kind) {
  const module = await import(`kubernetes-models/${apiVersion}/${kind}`);
  const model = module[kind];
  if (typeof model !== "function") {
    throw new Error(`no model for ${apiVersion} ${kind}`);
  }
  return model;
}

// Wraps value so that every field read through it is added to `read` (as
// "/path/to/field"). Objects are wrapped once each, so the validator sees a
// stable identity.
function recorder(value, path, read, cache) {
  if (value === null || typeof value !== "object") return value;
  if (cache.has(value)) return cache.get(value);
  const proxy = new Proxy(value, {
    get(target, key, receiver) {
      const child = Reflect.get(target, key, receiver);
      if (typeof key !== "string" || !Object.hasOwn(target, key)) return child;
      const childPath = `${path}/${key}`;
      read.add(childPath);
      return recorder(child, childPath, read, cache);
    },
    // `for (const key in data)` or Object.keys(data): a map, every key is
    // taken as read.
    ownKeys(target) {
      for (const key of Reflect.ownKeys(target)) {
        if (typeof key === "string") read.add(`${path}/${key}`);
      }
      return Reflect.ownKeys(target);
    },
  });
  cache.set(value, proxy);
  return proxy;
}

// Every field path in value ("/spec/replicas", "/spec/template/...").
function fieldPaths(value, path, out) {
  if (value === null || typeof value !== "object") return out;
  for (const [key, child] of Object.entries(value)) {
    const childPath = `${path}/${key}`;
    out.push(childPath);
    fieldPaths(child, childPath, out);
  }
  return out;
}

async function check(object) {
  const { apiVersion, kind } = object;
  const model = await modelFor(apiVersion, kind);
  const errors = [];
  const read = new Set();
  // The model's validator, run on a recording view of the object.
  try {
    model.prototype.validate.call(recorder(object, "", read, new Map()));
  } catch (e) {
    errors.push(...String(e.message).split("\n").filter(Boolean));
  }
  // The validator may stop reading at the first error: unknown fields are
  // looked for only in objects that pass.
  if (errors.length > 0) return errors;
  // A field is unknown when it was never read while its parent object was
  // (children of an unknown field are not listed again).
  const unknown = fieldPaths(object, "", []).filter((path) => {
    const parent = path.slice(0, path.lastIndexOf("/"));
    return !read.has(path) && (parent === "" || read.has(parent));
  });
  for (const path of unknown) errors.push(`${path}: not a field of ${kind} ${apiVersion}`);
  return errors;
}

let objects;
try {
  objects = JSON.parse(readFileSync(0, "utf8"));
  if (!Array.isArray(objects)) throw new Error("expected a JSON array of objects");
} catch (e) {
  console.error(`validate.mjs: ${e.message}`);
  process.exit(2);
}
let failed = 0;
for (const object of objects) {
  const name = `${object.kind}/${object.metadata?.name ?? "?"}`;
  let errors;
  try {
    errors = await check(object);
  } catch (e) {
    errors = [e.message];
  }
  if (errors.length === 0) {
    console.log(`ok ${name}`);
  } else {
    failed++;
    for (const error of errors) console.log(`FAIL ${name}: ${error}`);
  }
}
process.exit(failed ? 1 : 0);
