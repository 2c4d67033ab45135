// graphile-worker side of scripts/bench-jobs.sh (the job queue compared with graphile-worker
// 0.16 on the same cluster). Run by that script with NODE_PATH pointing at a throwaway
// `npm install graphile-worker@0.16 pg` in the bench's temp dir (never committed).
//
//   node bench-jobs-graphile.js migrate             install graphile-worker's schema, exit
//   node bench-jobs-graphile.js run                 run the `post` task until SIGTERM
// Env: DATABASE_URL, RECEIVER_URL (the webhook-receiver), GW_CONCURRENCY (default 32); the pool
// has a connection per concurrent job plus two (graphile-worker's default of 10 would make 32
// concurrent jobs queue for connections).
//
// The task POSTs the job's payload to the receiver over a keep-alive agent (the same work our
// worker does for a job: one HTTP request, fail on a non-2xx answer). Completed-job logging is
// off (only warnings and errors are printed): per-job log lines would slow graphile-worker down
// and the comparison should be fair to it.
"use strict";
const http = require("http");
const { run, runMigrations, Logger } = require("graphile-worker");

const connectionString = process.env.DATABASE_URL;
const receiver = new URL(process.env.RECEIVER_URL);
const concurrency = Number(process.env.GW_CONCURRENCY || 32);
const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`[${level}] ${message}`);
});

function post(payload) {
  const body = JSON.stringify(payload);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: receiver.hostname,
        port: receiver.port,
        path: receiver.pathname,
        method: "POST",
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        res.resume();
        res.on("end", () =>
          res.statusCode >= 200 && res.statusCode < 300
            ? resolve()
            : reject(new Error(`receiver answered ${res.statusCode}`)),
        );
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

async function main() {
  const mode = process.argv[2];
  if (mode === "migrate") {
    await runMigrations({ connectionString, logger });
    return;
  }
  if (mode !== "run") throw new Error("usage: bench-jobs-graphile.js migrate|run");
  const runner = await run({
    connectionString,
    concurrency,
    maxPoolSize: concurrency + 2,
    pollInterval: 1000,
    logger,
    taskList: { post: async (payload) => post(payload) },
  });
  await runner.promise;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
