"""Token-level unlikelihood loss (Welleck et al. 2019, arXiv:1908.04319): push down tokens already in the context."""

from __future__ import annotations

from typing import Any

from graph.training.dataset import IGNORE


def unlikelihood_loss(logits: Any, labels: Any, num_items: Any | None = None) -> Any:
    """-sum log(1 - p(c | x_<t)) over the negative candidates c of every target position t.

    logits (B, T, V) and labels (B, T) as the model sees them (targets are labels shifted by one);
    the candidates of a position are the distinct earlier targets of its row that differ from its
    own target (IGNORE positions take no part). Divided by num_items (the batch's target count
    across gradient accumulation, as transformers' loss does) or, if None, by this batch's count.
    """
    import torch

    logits, targets = logits[:, :-1, :], labels[:, 1:]
    valid = targets != IGNORE
    safe = targets.masked_fill(~valid, 0)
    b, t = safe.shape
    earlier = torch.ones(t, t, dtype=torch.bool, device=safe.device).tril(-1)  # [i, j]: j < i
    same = safe.unsqueeze(2) == safe.unsqueeze(1)  # [b, i, j]: target i == target j
    # a candidate j of position i: j earlier, valid, another token, and j its token's first occurrence
    first = ~(same & earlier).any(dim=2)  # [b, j]
    cand = earlier & valid.unsqueeze(1) & valid.unsqueeze(2) & ~same & first.unsqueeze(1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    cand_logp = logp.gather(2, safe.unsqueeze(1).expand(b, t, t))  # [b, i, j]: log p(target_j | x_<=i)
    one_minus = (1.0 - cand_logp.exp()).clamp(min=1e-5)
    total = -(one_minus.log() * cand).sum()
    denom = num_items if num_items is not None else valid.sum().clamp(min=1)
    return total / denom
