"""Studies built on the trainer: the ablation (ablation.py), the seed study across ablations
(seed_study.py), and the training and attention benchmarks (bench_training.py, bench_attention.py)."""
