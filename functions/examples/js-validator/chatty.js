// A deliberately noisy validator (world `validator`) for floe's sandbox tests, built
// with WASI like freshness.js: an event whose value is JSON with a numeric `print`
// field makes it write that many bytes to stdout (console.log). floe keeps the first
// 64 KiB of a call's output for its log and drops the rest: the call itself must never
// fail because a component printed too much. Every event is accepted.

const utf8 = new TextDecoder('utf-8');

export function validate(batch) {
  const verdicts = new Array(batch.events.length);
  for (let i = 0; i < batch.events.length; i++) {
    const value = batch.events[i].value;
    let print = 0;
    try {
      const doc = value ? JSON.parse(utf8.decode(value)) : null;
      if (doc && typeof doc.print === 'number') print = doc.print;
    } catch {
      // not JSON: nothing to print
    }
    const line = 'x'.repeat(1023);
    for (let n = 0; n < print; n += 1024) console.log(line);
    verdicts[i] = { tag: 'ok' };
  }
  return verdicts;
}
