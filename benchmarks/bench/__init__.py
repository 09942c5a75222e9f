"""The benchmark's parts, one responsibility each (benchmarks/benchmark.py is the entry point).

- providers: the registry of what is measured (add a peer there)
- peers: the pure-PyTorch formulations the fused loss is compared with
- inputs: the synthetic logits and labels
- checks: the comparison with float64 that every provider passes before it is timed
- timing, memory, floor: the harness (per-call times with the caches flushed before each call,
  peak extra memory, memory-traffic floor and copy bandwidth)
- machine, pace: what the rows record about the machine (name, load, commit; the CPU's
  arithmetic pace)
- run: measures every point and makes the rows
- csv_rows, table, plots: the reports
- host_time: the host's cost per call (--host-time), beside native ops
- options: the command line (one add_*_arguments function per group of flags)
"""
