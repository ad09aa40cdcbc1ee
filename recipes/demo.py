"""The embedded CPU demo: a tiny LLaDA built from nothing, masked SFT, then JustGRPO, with a before/after table.

    python recipes/demo.py                       # about 3 minutes on 2 CPU cores, no network
    python recipes/demo.py --seed 1 --output_dir outputs/demo-seed1
    python recipes/demo.py --quick               # a few steps: checks the plumbing only

Same as the `justgrpo-demo` console script; the logic lives in `justgrpo_trl.demo`.
"""

from justgrpo_trl.demo import main

if __name__ == "__main__":
    main()
