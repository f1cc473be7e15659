// Renders /openapi.json as a list of operations, grouped by tag. No framework, no remote assets.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return { name, schema: spec.components.schemas[name] || {} };
  }
  return { name: null, schema: schema || {} };
}

function typeOf(schema) {
  if (!schema) return "any";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  const type = Array.isArray(schema.type) ? schema.type.join(" | ") : schema.type || "any";
  return type === "array" ? `array of ${typeOf(schema.items)}` : type;
}

// A schema for people: its fields as a table (type, required, description), the rest as JSON.
function schemaBlock(spec, schema) {
  const { name, schema: body } = resolve(spec, schema);
  const title = name ? el("div", {}, "schema ", el("code", {}, name)) : null;
  if (!body.properties) return el("div", {}, title, el("pre", {}, JSON.stringify(body, null, 2)));
  const required = new Set(body.required || []);
  const rows = Object.entries(body.properties).map(([field, sub]) => el("tr", {},
    el("td", {}, el("code", {}, field)), el("td", {}, typeOf(sub)),
    el("td", {}, required.has(field) ? "required" : ""), el("td", {}, sub.description || "")));
  return el("div", {}, title, body.description ? el("p", {}, body.description) : null, el("table", {}, ...rows));
}

function security(op) {
  const requirements = op.security || [];
  if (!requirements.length) return "no credentials";
  return requirements.map((r) => Object.entries(r).map(([scheme, roles]) =>
    roles.length ? `${scheme} (${roles.join(", ")})` : scheme).join(" + ")).join(" or ");
}

function operation(spec, method, path, op) {
  const body = el("div", { class: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  body.append(el("p", { class: "auth" }, "Credentials: " + security(op)));
  if (op.parameters && op.parameters.length) {
    const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in),
      el("td", {}, p.required ? "required" : ""), el("td", {}, p.description || "")));
    body.append(el("h4", {}, "Parameters"), el("table", {}, ...rows));
  }
  if (op.requestBody) {
    const [media, content] = Object.entries(op.requestBody.content)[0];
    body.append(el("h4", {}, `Request body (${media})`), schemaBlock(spec, content.schema));
  }
  body.append(el("h4", {}, "Responses"));
  for (const [status, response] of Object.entries(op.responses || {})) {
    const resolved = response.$ref ? spec.components.responses[response.$ref.split("/").pop()] : response;
    body.append(el("div", {}, el("strong", {}, status + " "), resolved.description || ""));
    const content = resolved.content && Object.values(resolved.content)[0];
    if (content && content.schema && status < 400 && (content.schema.$ref || content.schema.properties)) {
      body.append(schemaBlock(spec, content.schema));
    }
  }
  const id = `${method}-${path}`.replace(/[^A-Za-z0-9]+/g, "-");
  return el("details", { class: "op", id },
    el("summary", {}, el("span", { class: `method ${method}` }, method.toUpperCase()),
      el("span", { class: "path" }, path), el("span", {}, op.summary || "")),
    body);
}

async function main() {
  const answer = await fetch("/openapi.json");
  const spec = await answer.json();
  document.getElementById("title").textContent = `${spec.info.title} API ${spec.info.version}`;
  document.getElementById("summary").textContent = spec.info.description;
  const groups = new Map((spec.tags || []).map((tag) => [tag.name, []]));
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operation(spec, method, path, op));
    }
  }
  const main = document.getElementById("operations");
  const toc = document.getElementById("toc");
  for (const [tag, ops] of groups) {
    main.append(el("h2", { id: `tag-${tag}` }, tag), ...ops);
    toc.append(el("a", { href: `#tag-${tag}` }, tag));
  }
  const schemas = Object.entries(spec.components.schemas).map(([name, schema]) =>
    el("details", { class: "op", id: `schema-${name}` }, el("summary", {}, el("code", {}, name)),
      el("div", { class: "body" }, schemaBlock(spec, schema))));
  main.append(el("h2", { id: "tag-schemas" }, "schemas"), ...schemas);
  toc.append(el("a", { href: "#tag-schemas" }, "schemas"));
  document.body.dataset.loaded = String(main.querySelectorAll(".op").length - schemas.length);
}

main().catch((error) => {
  document.getElementById("summary").textContent = `Could not load /openapi.json: ${error}`;
});
