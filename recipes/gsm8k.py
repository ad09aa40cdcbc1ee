"""GSM8K recipe: `accelerate launch recipes/gsm8k.py --config recipes/gsm8k.yaml` (same as `recipes/train.py`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train import main  # noqa: E402

if __name__ == "__main__":
    main()
