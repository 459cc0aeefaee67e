// One graphile-worker process for `datask-bench burndown`: a no-op task,
// the batched mode (a local queue and batched completions), as graphile-
// worker's own performance runs use it. Prints "ready" once it listens, and
// "handled <n>" after every 100 jobs its handler ran, so that the bench
// need not poll the job table (a `count(*)` every 2 ms over the whole drain
// took a core of the server away from the workers it measures).
//
//   node worker.mjs <database url> <concurrency>
//   node worker.mjs <database url> migrate
import { run, runMigrations } from "graphile-worker";

const [connectionString, mode] = process.argv.slice(2);
if (mode === "migrate") {
  await runMigrations({ connectionString });
  process.exit(0);
}
const concurrency = Number(mode);
let handled = 0;
const runner = await run({
  connectionString,
  concurrency,
  noHandleSignals: false,
  pollInterval: 1000,
  taskList: {
    noop: async () => {
      handled += 1;
      if (handled % 100 === 0) console.log(`handled ${handled}`);
    },
  },
  preset: {
    worker: {
      localQueue: { size: concurrency + 1 },
      completeJobBatchDelay: 0,
      failJobBatchDelay: 0,
      maxPoolSize: 4,
    },
  },
  logger: undefined,
});
console.log("ready");
await runner.promise;
