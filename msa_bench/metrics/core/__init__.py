"""The evaluation core every metric suite builds on: one batched greedy decoder (`decoding`), one teacher-forced
scorer (`scoring`), one membership-attack dispatch (`attacks`) and the comparisons of a model's evaluation with the
oracle's (`oracle`). A suite decides what to ask (prompts, scored tokens, eval sets); these modules decide how a
model is run, so that batching, padding and dtypes are the same for every suite."""
