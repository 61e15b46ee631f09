"""``vmb run`` with ``bench.proto.ProtoModelWorker`` as the model stage (see bench/proto.py)."""

from __future__ import annotations

import sys

import pipeline.runner
from bench.proto import ProtoModelWorker
from pipeline.cli import main

if __name__ == "__main__":
    pipeline.runner.ModelWorker = ProtoModelWorker
    sys.exit(main(["run", *sys.argv[1:]]))
