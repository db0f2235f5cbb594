#!/usr/bin/env python3
"""Offer more spans than tpsgap's configured capacity with the real
OpenTelemetry Python SDK exporter, which retries refusals.

    send_load.py --protocol grpc --endpoint http://127.0.0.1:4317 --run-id r --spans 8000

Each span is one request of run RUN. The SDK's own queue is made large
enough to hold them all, so every span the script creates is offered to
tpsgap; the script prints how many it created and how long the export took.
"""
import argparse
import sys
import time

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

T0 = 1800000000 * 10**9


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", choices=["grpc", "http"], required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--spans", type=int, default=8000)
    args = ap.parse_args()
    if args.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=args.endpoint, insecure=True, timeout=60)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=args.endpoint, timeout=60)
    provider = TracerProvider(resource=Resource.create({"service.name": "tpsgap-load"}))
    provider.add_span_processor(BatchSpanProcessor(
        exporter, max_queue_size=args.spans + 1024, max_export_batch_size=512, schedule_delay_millis=20))
    tracer = provider.get_tracer("tpsgap.load")
    start = time.monotonic()
    for i in range(args.spans):
        q = T0 + i * 10_000_000
        span = tracer.start_span("llm.request", start_time=q, attributes={
            "run_id": args.run_id, "request_id": f"r{i}", "queued_at": q,
            "admitted_at": q, "released_at": q + 5_000_000, "output_tokens": 10, "cap": 64})
        span.end(end_time=q + 5_000_000)
    ok = provider.force_flush(timeout_millis=180_000)
    provider.shutdown()
    print(f"created {args.spans} spans, flushed={ok}, {time.monotonic() - start:.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
