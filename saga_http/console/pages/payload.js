// Checking a JSON payload typed by a person before it is sent: it must parse, and be an object.

/** {value} for a JSON object, or {error} naming `field` and saying what is wrong. */
export function parsePayload(text, field) {
  const source = String(text ?? "").trim();
  if (!source) return { error: `${field}: must be a JSON object, e.g. {}` };
  let value;
  try {
    value = JSON.parse(source);
  } catch (error) {
    return { error: `${field}: not valid JSON: ${error.message}` };
  }
  if (!value || typeof value !== "object" || Array.isArray(value)) {
    return { error: `${field}: must be a JSON object, not ${Array.isArray(value) ? "an array" : value === null ? "null" : typeof value}` };
  }
  return { value };
}
