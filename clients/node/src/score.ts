#!/usr/bin/env node
// Reads raw HDFS log lines from stdin, scores them over one bidirectional logmesh.v1.ScorerService/ScoreStream
// in batches, and prints one line per input line: `<VERDICT> <score|error message> <record_id>`.
import * as readline from "node:readline";
import { credentials, ServiceError } from "@grpc/grpc-js";
import { Verdict } from "../gen/logmesh/v1/score";
import { ScoreItem, ScorerServiceClient, ScoreStreamResponse } from "../gen/logmesh/v1/scorer_service";

function parseArgs(argv: string[]): { scorer: string; batchSize: number } {
  const opts = { scorer: "127.0.0.1:50052", batchSize: 256 };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--scorer") opts.scorer = argv[++i];
    else if (argv[i] === "--batch-size") opts.batchSize = Number(argv[++i]);
    else {
      process.stderr.write("usage: logmesh-score [--scorer host:port] [--batch-size N] < lines\n");
      process.exit(2);
    }
  }
  return opts;
}

function verdictName(v: Verdict): string {
  return v === Verdict.VERDICT_NORMAL ? "NORMAL" : v === Verdict.VERDICT_ANOMALY ? "ANOMALY" : "UNSPECIFIED";
}

async function main(): Promise<void> {
  const { scorer, batchSize } = parseArgs(process.argv.slice(2));
  const client = new ScorerServiceClient(scorer, credentials.createInsecure(), {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
  });
  const call = client.scoreStream();
  const out: string[] = [];
  const finished = new Promise<void>((resolve, reject) => {
    call.on("data", (reply: ScoreStreamResponse) => {
      if (reply.error) {
        reject(new Error(`batch ${reply.batchId} rejected: code ${reply.error.code}: ${reply.error.message}`));
        return;
      }
      for (const r of reply.results) {
        if (r.result) out.push(`${verdictName(r.result.verdict)} ${r.result.score.toFixed(4)} ${r.recordId}`);
        else if (r.error) out.push(`ERROR ${r.error.message} ${r.recordId}`);
        else out.push(`ERROR no outcome ${r.recordId}`);
      }
      if (out.length >= 1024) process.stdout.write(out.splice(0).join("\n") + "\n");
    });
    call.on("error", (err: ServiceError) => reject(err));
    call.on("end", () => resolve());
  });

  let batch: ScoreItem[] = [];
  let batchId = 0;
  const flush = () => {
    if (batch.length) call.write({ batchId: batchId++, items: batch });
    batch = [];
  };
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    batch.push({ rawLine: line });
    if (batch.length >= batchSize) flush();
  }
  flush();
  call.end();
  try {
    await finished;
  } finally {
    if (out.length) process.stdout.write(out.join("\n") + "\n");
    client.close();
  }
}

main().catch((err: Error) => {
  process.stderr.write(`logmesh-score: ${err.message}\n`);
  process.exitCode = 1;
});
