"""JustGRPO throughput and memory against a naive per-position baseline, side by side in one run.

Phases, all on the same model, the same prompts and the same completion lengths:

* **rollout** -- baseline: the reference AR-order loop, `gen_length` full forwards of the whole batch (no early exit),
  full `[B, S, V]` logits materialised, the slot `P + j` read, sampled and written in. Ours: `decoding.ar_decode`
  (finished rows leave the batch, logits only at the row being decoded).
* **scoring+backward** (the policy-gradient pass of one GRPO update) -- baseline: for each of the `gen_length`
  positions, the canvas `[prompt | c_<j | MASK x (L - j)]` of the whole batch, a full forward with full logits, the
  log-prob at `P + j`, and one backward of that position's share of the loss, every position regardless of where the
  answer ended. Ours: `collators.ARScoringCanvases` (only the (row, position) pairs before the end of the answer,
  packed across rows into chunks), each chunk scored and its share of the loss backpropagated at once
  (`chunked_backward.backward_chunk_by_chunk` with `TokenLoss`, the trainer's default path).
* **checkpointed** -- the trainer's other path (ZeRO-3, FSDP, losses that couple tokens): `estimators.score_canvases`
  (each chunk under non-reentrant checkpointing), then one backward of the same loss.
* **JustGRPO-Fast** -- ours, scoring only the top-q highest-entropy positions, selected from the entropies recorded
  during the rollout (TRL's quantile rule); the other positions are never computed.

Completion lengths are realistic: every row's end of answer is drawn from a clipped normal with mean
`mean_fraction * gen_length` (0.6, as GSM8K answers use), and the model is wrapped (identically for baseline and
ours) so that it emits a stop token exactly there: stop tokens get logit -inf before the row's end and the first stop
token +1e4 at it. Rows are recognised by their distinct first prompt token, which survives the decoder's compaction.

Run `python benchmarks/bench_justgrpo.py --help`; `benchmarks/README.md` has the commands and the measured numbers.
"""
