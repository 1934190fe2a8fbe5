"""Clients of the served `bamsgan` model (Triton, gRPC).

- `clients.generate`: request faces by seed; `request_faces(url, seeds)` for reuse.
- `clients.benchmark`: closed-loop (concurrency) and open-loop (Poisson rate) load generator with
  Triton's server-side statistics, and `--compare-raw` against the same ONNX engine in-process.
- `clients.perf_analyzer`: locate Triton's perf_analyzer and run the same configurations with it.
- `clients.demo`: the whole system end to end (train -> export -> serve -> generate -> bench).
"""
