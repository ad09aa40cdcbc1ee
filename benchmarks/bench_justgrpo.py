"""Command line of the JustGRPO throughput and memory benchmark (the code is the `justgrpo_bench` package beside it).

    python benchmarks/bench_justgrpo.py --model tiny --repeats 5 --json tiny.json

`--help` lists the options; `benchmarks/README.md` has the commands and the measured numbers.
"""

from justgrpo_bench.run import run

if __name__ == "__main__":
    run()
