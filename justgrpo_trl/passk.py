"""pass@k: the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on Code").

With `n` samples of a problem of which `c` are correct, `pass@k = 1 - C(n - c, k) / C(n, k)`: the probability that
at least one of `k` samples drawn without replacement from the `n` is correct. It is computed as the product
`prod_{i = n - c + 1}^{n} (1 - k / i)`, which never forms the (huge) binomial coefficients.
"""

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = ["default_ks", "mean_pass_at_k", "parse_ks", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples, `c` of them correct (`0 <= c <= n`, `1 <= k <= n`)."""
    if not 0 <= c <= n:
        raise ValueError(f"Need 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, got n={n}.")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(num_samples: Sequence[int], num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems; `num_samples[i]` and `num_correct[i]` describe problem i."""
    if len(num_samples) != len(num_correct) or not num_samples:
        raise ValueError("Need one (num_samples, num_correct) pair per problem, and at least one problem.")
    return float(np.mean([pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)]))


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to `n`, and `n` itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return sorted(set(ks) | {n})


def parse_ks(text: str | Iterable[int] | None, n: int) -> list[int]:
    """`"1,4,16"` (or a list) as sorted unique ints; `None` gives `default_ks(n)`. Values above `n` are an error."""
    if text is None or text == "":
        return default_ks(n)
    values = [int(v) for v in text.replace(" ", "").split(",") if v] if isinstance(text, str) else list(text)
    ks = sorted(set(values))
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be positive integers, got {text!r}.")
    if ks[-1] > n:
        raise ValueError(f"pass@{ks[-1]} needs at least {ks[-1]} samples per problem: raise --n (now {n}).")
    return ks
