"""The diagonal empirical Fisher of a causal LM's loss: the mean over batches of the squared gradient, per parameter.

For batches b = 1..B of `batch_size` examples (in the order given; the last one may be smaller),

    F[i] = (1/B) · Σ_b (∂L_b / ∂θ_i)²,    L_b = the mean NLL over the labelled tokens of batch b

(the fine-tunes' own loss, training/losses.py:mean_token_nll). With batch_size 1 it is the per-example empirical
Fisher; a larger batch averages the gradients inside a batch before squaring, which is cheaper and estimates
E[g]² + Var[g]/batch_size rather than E[g²]. The model is put in eval mode (no dropout), so the result depends only on
the weights, the examples and the batch size. Squares are accumulated in float32 whatever the model's dtype.

msa_fisher (methods/msa_fisher.py) caches it as its own stage; this module knows nothing of the cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from msa_bench.training.data import Example, PaddingCollator
from msa_bench.training.losses import mean_token_nll


def parameters_by_name(model: torch.nn.Module, names: Iterable[str]) -> dict[str, torch.nn.Parameter]:
    """The parameters of `model` under the checkpoint's tensor `names` that are parameters (a tied lm_head shares
    its embedding's parameter under both names); buffers and names the model lacks are left out."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    return {name: parameters[name] for name in names if name in parameters}


def diagonal_fisher(
    model: torch.nn.Module,
    examples: Sequence[Example],
    parameters: Mapping[str, torch.nn.Parameter],
    *,
    batch_size: int,
    pad_token_id: int,
) -> tuple[dict[str, Tensor], int]:
    """The diagonal Fisher (see the module's docstring) of each of `parameters` (name -> parameter of `model`), in
    float32 on the parameters' device, and the number of tokens processed (attention mask, padding excluded)."""
    if not examples:
        raise ValueError("the diagonal Fisher needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    # One accumulator per distinct parameter: tied names share theirs (and so do not double the memory).
    unique: dict[int, torch.nn.Parameter] = {id(p): p for p in parameters.values()}
    sums = {key: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for key, p in unique.items()}
    collator = PaddingCollator(pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tokens = batches = 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) for k, v in collator.pad(examples[start : start + batch_size]).items()}
            model.zero_grad(set_to_none=True)
            loss = mean_token_nll(model, batch)
            if not torch.isfinite(loss.detach()):
                raise ValueError(f"non-finite loss ({loss.item()}) on the Fisher's batch {batches}")
            loss.backward()
            for key, parameter in unique.items():
                if parameter.grad is not None:  # None: the loss does not depend on it (a 0 contribution)
                    sums[key].addcmul_(parameter.grad.float(), parameter.grad.float())
            tokens += int(batch["attention_mask"].sum())
            batches += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    for accumulated in sums.values():
        accumulated.div_(batches)
    return {name: sums[id(p)] for name, p in parameters.items()}, tokens


def write_fisher(path: Path, fisher: Mapping[str, Tensor]) -> None:
    """Save `fisher` (name -> float32 tensor) as one safetensors file, a tensor at a time (no second copy of the
    whole Fisher in host memory, whatever its device)."""
    from msa_bench.arithmetic.safetensors_stream import StreamingSafetensorsWriter

    entries = {name: ("F32", tuple(tensor.shape)) for name, tensor in fisher.items()}
    with StreamingSafetensorsWriter(path, entries, None) as writer:
        for name in writer.order:
            writer.write(name, fisher[name].detach().to("cpu", torch.float32).contiguous())
