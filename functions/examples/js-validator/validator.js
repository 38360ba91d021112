// An example floe validator in JavaScript (world `validator` of wit/floe.wit), with
// the rules of the Rust example (functions/examples/rules-validator):
// - `amount`, where a row has it, must be non-negative;
// - `currency`, where present, must be one of CURRENCIES;
// - `email`, where present and not null, must look like `local@domain.tld`.
//
// Deletes are accepted (the row is going away), and so are records that carry no row
// (tombstones, records without `op` such as heartbeats, truncates, logical
// messages). A value that is not JSON is rejected with a reason starting `parse:`.
// Exactly one verdict per event, in order.
//
// Unlike a floe-sdk validator this one reads the Debezium envelope itself: decimals
// arrive as Debezium encodes them (a string such as "-1.00", a number, or base64
// bytes under `decimal.handling.mode=precise`), and only what parses as a negative
// number is rejected.

const CURRENCIES = ['USD', 'EUR', 'GBP', 'CHF'];

const utf8 = new TextDecoder('utf-8', { fatal: true });

// A decimal number as Debezium writes one into a string ("12.50", "-1", "1e3").
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// A JSON number, or a string holding a decimal number; undefined for anything else
// (base64 decimals, structs, null).
function numberOf(v) {
  if (typeof v === 'number') return v;
  if (typeof v === 'string' && DECIMAL.test(v)) return Number(v);
  return undefined;
}

// `local@domain.tld`: one `@`, a non-empty local part, a dot inside the domain, no
// whitespace.
function wellFormedEmail(s) {
  const at = s.indexOf('@');
  if (at <= 0 || /\s/.test(s)) return false;
  const domain = s.slice(at + 1);
  if (domain.includes('@')) return false;
  const dot = domain.indexOf('.');
  if (dot <= 0) return false;
  const tld = domain.slice(dot + 1);
  return tld.length > 0 && !tld.endsWith('.');
}

// `schema.table` from the envelope's `source`, else from the topic
// (`<prefix>.<schema>.<table>`), as floe's transformer names tables.
function tableOf(envelope, topic) {
  const source = envelope.source;
  if (isObject(source) && typeof source.schema === 'string' && typeof source.table === 'string') {
    return `${source.schema}.${source.table}`;
  }
  return topic.split('.').slice(-2).join('.');
}

// The reason a row breaks a rule, or undefined.
function check(row) {
  const amount = numberOf(row.amount);
  if (amount !== undefined && amount < 0) {
    return `amount must be non-negative, got ${amount}`;
  }
  if (typeof row.currency === 'string' && !CURRENCIES.includes(row.currency)) {
    return `currency ${JSON.stringify(row.currency)} is not one of ${CURRENCIES.join(', ')}`;
  }
  if (typeof row.email === 'string' && !wellFormedEmail(row.email)) {
    return `malformed email ${JSON.stringify(row.email)}`;
  }
  return undefined;
}

function verdictOf(value, topic) {
  if (value === undefined || value === null) return { tag: 'ok' };
  let doc;
  try {
    doc = JSON.parse(utf8.decode(value));
  } catch (e) {
    return { tag: 'rejected', val: `parse: value is not JSON: ${e && e.message}` };
  }
  // With schemas: {"schema": ..., "payload": <envelope>}.
  if (isObject(doc) && !('op' in doc) && 'payload' in doc) doc = doc.payload;
  if (!isObject(doc)) return { tag: 'ok' };
  const op = doc.op;
  if (op !== 'c' && op !== 'u' && op !== 'r') return { tag: 'ok' };
  if (!isObject(doc.after)) return { tag: 'ok' };
  const reason = check(doc.after);
  if (reason === undefined) return { tag: 'ok' };
  return { tag: 'rejected', val: `js-rules: ${tableOf(doc, topic)}: ${reason}` };
}

export function validate(batch) {
  const { topics, events } = batch;
  const verdicts = new Array(events.length);
  for (let i = 0; i < events.length; i++) {
    const event = events[i];
    const topic = topics[event.topic];
    if (topic === undefined) {
      throw {
        payload: {
          tag: 'invalid-input',
          val: `event ${i}: topic index ${event.topic} out of range (${topics.length} topics)`,
        },
      };
    }
    try {
      verdicts[i] = verdictOf(event.value, topic);
    } catch (e) {
      throw { payload: { tag: 'internal', val: `event ${i}: ${(e && e.message) || e}` } };
    }
  }
  return verdicts;
}
