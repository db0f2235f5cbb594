#!/usr/bin/env node
// Send the worked example (examples/small.jsonl: requests A-D, cap 1, one
// stall) to tpsgap with the real OpenTelemetry JavaScript SDK and its OTLP
// exporters: over HTTP, JSON (`@opentelemetry/exporter-trace-otlp-http`, as
// browsers and Node services send it) or protobuf
// (`@opentelemetry/exporter-trace-otlp-proto`); or over gRPC
// (`@opentelemetry/exporter-trace-otlp-grpc`, on grpc-js).
//
//   node send_example.cjs --format json --endpoint http://127.0.0.1:4318/v1/traces --run-id r1
//   node send_example.cjs --format proto --compression gzip --endpoint ... --run-id r2
//   node send_example.cjs --format grpc --compression gzip --endpoint http://127.0.0.1:4317 --run-id r3
//
// Spans carry the same attributes, times and status as the example file,
// so the report must equal examples/small.expected.json (hand-computed).
// Exits 1 if the export fails.
'use strict';
const { parseArgs } = require('node:util');
const { TracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const { SpanStatusCode } = require('@opentelemetry/api');

const { values: args } = parseArgs({
  options: {
    format: { type: 'string' },
    endpoint: { type: 'string' },
    'run-id': { type: 'string' },
    compression: { type: 'string', default: 'none' },
  },
});
const T0 = 1793491200; // 2026-11-01T00:00:00Z, seconds
const NS = 1_000_000_000;
// request: [queued, admitted, first token, last token, released], extra attributes, error
const REQUESTS = {
  A: [[0, 0, 1, 3, 4], { output_tokens: 30, cap: 1 }, false],
  B: [[1, 4, null, null, 6], {}, false],
  C: [[2, null, null, null, 3], {}, true],
  D: [[6, 8, null, null, 10], { retry_count: 2 }, false],
};
const NAMES = ['queued_at', 'admitted_at', 'first_token_at', 'last_token_at', 'released_at'];

const pkg = {
  json: 'exporter-trace-otlp-http',
  proto: 'exporter-trace-otlp-proto',
  grpc: 'exporter-trace-otlp-grpc',
}[args.format];
if (!pkg) throw new Error(`--format json|proto|grpc, not ${args.format}`);
const { OTLPTraceExporter } = require(`@opentelemetry/${pkg}`);
const exporter = new OTLPTraceExporter({ url: args.endpoint, compression: args.compression });
const provider = new TracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'tpsgap-e2e-js' }),
  spanProcessors: [new BatchSpanProcessor({ exporter })],
});
const tracer = provider.getTracer('tpsgap.e2e');
for (const [rid, [times, extra, error]] of Object.entries(REQUESTS)) {
  const known = times.filter((t) => t !== null);
  // Nanosecond times as JavaScript numbers: exact, as whole seconds in
  // nanoseconds are multiples of 2^9 and doubles this large are 2^8 apart.
  const attributes = { run_id: args['run-id'], request_id: rid, ...extra };
  NAMES.forEach((name, i) => {
    if (times[i] !== null) attributes[name] = (T0 + times[i]) * NS;
  });
  const span = tracer.startSpan('llm.request', {
    startTime: [T0 + Math.min(...known), 0],
    attributes,
  });
  if (error) span.setStatus({ code: SpanStatusCode.ERROR, message: 'abandoned' });
  span.end([T0 + Math.max(...known), 0]);
}
provider
  .forceFlush()
  .then(() => provider.shutdown())
  // A refused or failed export rejects the flush.
  .catch((e) => {
    console.error('export failed:', e);
    process.exit(1);
  });
