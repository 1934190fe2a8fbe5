#!/bin/bash
# images/s of one full training step, c=16, 1 thread: BaMSGAN (memory replayed), SAGAN, BaMSGAN + DiffAugment, alternated
cd "$(dirname "$0")/../../.."  # the repository root; data from ../shared/data
for round in 1 2 3; do
  for v in "bamsgan" "sagan" "diffaugment"; do
    .venv/bin/python -m training.train --bench 4 --ablation $v --threads 1 --batch-size 32 --no-tensorboard | tail -1 | sed "s/^/round $round $v /"
  done
done
