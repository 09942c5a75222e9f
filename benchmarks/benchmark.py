#!/usr/bin/env python
"""Speed and memory of the fused sigmoid DR loss against its pure-PyTorch peers.

    python benchmarks/benchmark.py --quick          # the demo: one small size, under a minute
    python benchmarks/benchmark.py                  # the full run on this machine's default device
    python benchmarks/benchmark.py --device cuda    # RetinaNet sizes, float32/bfloat16/float16

Every provider is checked against float64 (loss and gradient) on the inputs it is timed on
before it is timed; the timed calls of all providers and modes are interleaved. A provider that
fails is not timed and the run exits with status 1. The run prints one table, what its columns
mean and where its rows went: the CSV and plots go to --out-dir (by default a folder under the
system's temporary directory), never into the checkout unless --record asks. The parts live in
bench/; benchmarks/README.md describes the options and every column.
"""

import os
import sys
from contextlib import contextmanager
from pathlib import Path

# Kineto prints a line at each profiler start and stop (the CPU memory figure uses the
# profiler); keep the output readable.
os.environ.setdefault("KINETO_LOG_LEVEL", "99")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:
    sys.path.append(str(HERE.parent))  # fallback when drloss_cuda is built in place but not installed

from bench import host_time, options, run  # noqa: E402


class Tee:
    """Writes to a stream and a file."""

    def __init__(self, stream, path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.stream, self.file = stream, open(path, "w")

    def write(self, text):
        self.stream.write(text)
        self.file.write(text)

    def flush(self):
        self.stream.flush()
        self.file.flush()


@contextmanager
def printed_to(log):
    """Everything printed inside also goes to `log` (when it is not None)."""
    if log is None:
        yield
        return
    tee = Tee(sys.stdout, log)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = tee.stream
        tee.file.close()


def main(argv=None):
    args = options.build_parser().parse_args(argv)
    if args.host_time:  # a mode of its own (bench/host_time.py): no CSV, plots or log
        return host_time.run(args)
    args = options.resolve_args(args)
    with printed_to(args.log):
        return run.run(args)


if __name__ == "__main__":
    sys.exit(main())
