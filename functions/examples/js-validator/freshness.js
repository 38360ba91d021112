// A second example validator (world `validator`) that needs the host's clock: it
// rejects row changes whose `source.ts_ms` lies more than MAX_SKEW_MS in the future
// of `Date.now()`, and accepts everything else (a value that is not JSON included:
// floe's transformer rejects those).
//
// `Date.now()` reads WASI's wall clock, so `build.mjs --wasi` builds this file with
// the engine's WASI features on: the component imports WASI clocks, random, stdio
// and filesystem interfaces and only loads where floe grants them.

const MAX_SKEW_MS = 5 * 60 * 1000;

const utf8 = new TextDecoder('utf-8', { fatal: true });

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

// `schema.table` from the envelope's `source`, else from the topic.
function tableOf(source, topic) {
  if (typeof source.schema === 'string' && typeof source.table === 'string') {
    return `${source.schema}.${source.table}`;
  }
  return topic.split('.').slice(-2).join('.');
}

function verdictOf(value, topic, now) {
  if (value === undefined || value === null) return { tag: 'ok' };
  let doc;
  try {
    doc = JSON.parse(utf8.decode(value));
  } catch {
    return { tag: 'ok' };
  }
  // With schemas: {"schema": ..., "payload": <envelope>}.
  if (isObject(doc) && !('op' in doc) && 'payload' in doc) doc = doc.payload;
  if (!isObject(doc) || !['c', 'u', 'd', 'r'].includes(doc.op)) return { tag: 'ok' };
  const source = doc.source;
  if (!isObject(source) || typeof source.ts_ms !== 'number') return { tag: 'ok' };
  const ahead = source.ts_ms - now;
  if (ahead <= MAX_SKEW_MS) return { tag: 'ok' };
  return {
    tag: 'rejected',
    val:
      `js-freshness: ${tableOf(source, topic)}: source.ts_ms ${source.ts_ms} is ` +
      `${Math.round(ahead / 1000)} s in the future (more than ${MAX_SKEW_MS / 1000} s)`,
  };
}

export function validate(batch) {
  const { topics, events } = batch;
  // Once per call: the clock is read at run time, never while the component is built.
  const now = Date.now();
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
      verdicts[i] = verdictOf(event.value, topic, now);
    } catch (e) {
      throw { payload: { tag: 'internal', val: `event ${i}: ${(e && e.message) || e}` } };
    }
  }
  return verdicts;
}
