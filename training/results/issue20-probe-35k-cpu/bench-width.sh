#!/bin/bash
# images/s of one full BaMSGAN training step (memory replayed), c=16 against c=32, alternated, 1 thread
cd "$(dirname "$0")/../../.."  # the repository root; data from ../shared/data
for round in 1 2 3; do
  for c in 16 32; do
    .venv/bin/python -m training.train --bench 4 --channels $c --threads 1 --batch-size 32 --no-tensorboard | tail -1 | sed "s/^/round $round c $c /"
  done
done
