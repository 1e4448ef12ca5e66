// Runs a wasm32-wasip1 build of benches/soak_heap.rs under Node's WASI, so
// the soak's linear memory is read with the plugin's own allocator
// (wasi-libc's dlmalloc). `make bench-heap` builds and runs it:
//   node benches/soak_heap_wasi.mjs <soak_heap.wasm> [--updates N] [--drift]
import { readFile } from 'node:fs/promises';
import { argv } from 'node:process';
import { WASI } from 'node:wasi';

if (argv.length < 3) {
  console.error('usage: node benches/soak_heap_wasi.mjs <soak_heap.wasm> [args...]');
  process.exit(2);
}
const wasi = new WASI({ version: 'preview1', args: argv.slice(2), env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(argv[2]));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
