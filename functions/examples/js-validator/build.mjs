// node build.mjs <out.wasm> [--wasi [SOURCE.js]]
//
// Builds validator.js into a component of world `validator` (wit/floe.wit) with
// componentize-js: the StarlingMonkey engine (SpiderMonkey) with the script
// pre-initialised into it. Every engine feature that needs the host (stdio, random,
// clocks, http, fetch-event) is left out, so the component imports nothing a host
// provides, as floe requires.
//
// --wasi builds freshness.js (or the SOURCE.js given after it, e.g. chatty.js) instead,
// with only http and fetch-event left out: that component imports WASI (clocks, random,
// stdio, filesystem) and exists to exercise floe's WASI grants and sandbox.
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { componentize } from '@bytecodealliance/componentize-js';

const args = process.argv.slice(2);
const wasi = args.includes('--wasi');
const rest = args.filter((a) => a !== '--wasi');
if (rest.length < 1 || rest.length > 2 || rest.some((a) => a.startsWith('-')) || (rest.length === 2 && !wasi)) {
  console.error('usage: node build.mjs <out.wasm> [--wasi [SOURCE.js]]');
  process.exit(2);
}
const out = resolve(rest[0]);
const here = dirname(fileURLToPath(import.meta.url));
const source = wasi ? (rest[1] ?? 'freshness.js') : 'validator.js';
const disableFeatures = wasi
  ? ['http', 'fetch-event']
  : ['stdio', 'random', 'clocks', 'http', 'fetch-event'];

// componentize-js maps the source's directory into the engine while pre-initialising
// it; building from here keeps that directory this one.
process.chdir(here);
const started = performance.now();
const { component } = await componentize({
  sourcePath: resolve(here, source),
  witPath: resolve(here, '../../../wit'),
  worldName: 'validator',
  disableFeatures,
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
const secs = ((performance.now() - started) / 1000).toFixed(1);
const kib = Math.ceil(component.length / 1024);
console.log(`${out}: ${kib} KiB from ${source} (without ${disableFeatures.join(', ')}), ${secs} s`);
