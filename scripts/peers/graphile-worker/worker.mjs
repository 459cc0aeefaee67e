// One graphile-worker process for `datask-bench burndown`: a no-op task,
// the batched mode (a local queue and batched completions), as graphile-
// worker's own performance runs use it. Prints "ready" once it listens.
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
const runner = await run({
  connectionString,
  concurrency,
  noHandleSignals: false,
  pollInterval: 1000,
  taskList: { noop: async () => {} },
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
