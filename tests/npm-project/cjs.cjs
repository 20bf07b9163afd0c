// Node CommonJS: `require` the package, and say which file it resolved to.
const pgrelay = require('@pgrelay/client');

const entry = require.resolve('@pgrelay/client');
import('./scenario.mjs')
  .then(({ scenario }) => scenario(pgrelay))
  .then((result) => console.log(JSON.stringify({ entry, ...result })));
