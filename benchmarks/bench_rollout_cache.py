"""Command line of the rollout cache benchmark (the code is `justgrpo_bench.cache` beside it).

    python benchmarks/bench_rollout_cache.py --model 50m --clock cpu --threads 1 --json cache.json
    python benchmarks/bench_rollout_cache.py --skip_speed --fidelity_checkpoint path/to/trained --json fid.json

`--help` lists the options; `benchmarks/README.md` has the measured numbers.
"""

from justgrpo_bench.cache import run

if __name__ == "__main__":
    run()
