// The file a browser loads (`@pgrelay/client/browser`, the relay's /v1/client.js): the
// minified build, run in Node through its fetch transport.
import * as pgrelay from '@pgrelay/client/browser';

import { scenario } from './scenario.mjs';

const entry = import.meta.resolve('@pgrelay/client/browser');
console.log(JSON.stringify({ entry, ...(await scenario(pgrelay)) }));
