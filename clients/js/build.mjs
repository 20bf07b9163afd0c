// `npm run build` (and `prepack`): writes dist/ from src/ with esbuild. The files are
// committed, because the relay compiles the browser file in (cargo build needs no Node);
// tests/suite/js_client.rs checks they are exactly what this script makes.
//
// - dist/pgrelay-client.min.js  the file a browser loads: one minified ES module, served by
//                               every relay at /v1/client.js (size budget: 8 KiB gzipped)
// - dist/index.cjs              the CommonJS build, for `require('@pgrelay/client')`
// - dist/index.d.cts            the declarations for `require`: index.d.ts under a header,
//                               because TypeScript reads a `.d.ts` in this "type": "module"
//                               package as an ES module's
// Node's and bundlers' `import` take src/index.js as it is: readable, with its comments.

import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';

import { build } from 'esbuild';

const common = {
  entryPoints: ['src/index.js'],
  bundle: true,
  // The syntax src/ is written in (private fields and methods, `??=`): nothing to lower.
  target: 'es2022',
  logLevel: 'warning',
};

await rm('dist', { recursive: true, force: true });
await mkdir('dist');
await Promise.all([
  build({
    ...common,
    format: 'esm',
    platform: 'browser',
    minify: true,
    banner: { js: '/* @pgrelay/client, MIT; readable source: clients/js/src in pgrelay */' },
    outfile: 'dist/pgrelay-client.min.js',
  }),
  build({ ...common, format: 'cjs', platform: 'node', outfile: 'dist/index.cjs' }),
  readFile('index.d.ts', 'utf8').then((declarations) =>
    writeFile(
      'dist/index.d.cts',
      '// Made by build.mjs from index.d.ts (edit that): the declarations of dist/index.cjs.\n' +
        declarations,
    ),
  ),
]);
