// Node ESM: `import` the package, and say which file it resolved to.
import * as pgrelay from '@pgrelay/client';

import { scenario } from './scenario.mjs';

const entry = import.meta.resolve('@pgrelay/client');
console.log(JSON.stringify({ entry, ...(await scenario(pgrelay)) }));
