"""`cache_frozen` on the review demo's model and batches, whose width changes from batch to batch:
`python -m bench.cache_demo [policy ...]` (not part of `make bench`; docs/caching.md quotes it).

The demo's MiniLM (`build_classifier("pretrained", 0)`, `make install` installs its files) on its
640 training snippets, in the demo's length-grouped batches of 16 (`length_grouped_batches`),
each cut to its longest snippet by `Encoded.batch`. The batches are drawn once and reused every
epoch, so each snippet comes back with the same padded row and can hit the cache. For each
policy, two epochs of the model uncached, then two epochs of a fresh copy wrapped by
`cache_frozen`, with AdamW over the trainable parameters and the frozen modules in eval mode on
both sides (what the cache does with dropout in the frozen part), one torch thread. Prints each
epoch's wall and CPU seconds, the captures and their seconds, hits and misses, and whether the
losses of the two runs are equal bit for bit.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import freezepolicy
from freezepolicy.demo.minilm import Encoded, build_classifier, encode, tokenizer
from freezepolicy.demo.reviews_data import read_snippets, split_by_movie
from freezepolicy.demo.training import length_grouped_batches

from .common import ROOT

POLICIES = ("minilm_head_only", "minilm_last2")


def _eval_frozen(model: nn.Module) -> None:
    for m in model.modules():
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            m.eval()


def run_policy(policy: str, data: Encoded, batches: list[torch.Tensor], cached: bool) -> Any:
    """Two epochs; (per-epoch (wall s, CPU s, stats or None), losses)."""
    model = build_classifier("pretrained", 0)
    freezepolicy.apply_policy(model, ROOT / "policies" / f"{policy}.freeze")
    model.train()
    _eval_frozen(model)
    net = freezepolicy.cache_frozen(model) if cached else model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, fused=True)
    ids, mask, labels = data.batch(batches[0])  # torch's first-call costs, outside the timing
    F.cross_entropy(model(ids, mask), labels).backward()
    optimizer.zero_grad()
    torch.manual_seed(0)
    epochs, losses = [], []
    for _ in range(2):
        if isinstance(net, freezepolicy.CachedModule):
            net.reset_stats()
        wall, cpu = time.perf_counter(), time.process_time()
        for index in batches:
            ids, mask, labels = data.batch(index)
            loss = F.cross_entropy(net(ids, mask), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stats = net.stats() if isinstance(net, freezepolicy.CachedModule) else None
        epochs.append((wall, cpu, stats))
    return epochs, losses


def main(policies: list[str]) -> None:
    torch.set_num_threads(1)
    splits = split_by_movie(read_snippets(), (640, 160, 480), 0)
    data = encode(tokenizer(), splits.train, 32)
    batches = length_grouped_batches(data, 16, 8, torch.Generator().manual_seed(0))
    widths = sorted({int(data.attention_mask[i].sum(1).max()) for i in batches})
    print(f"{len(batches)} batches of 16, {len(widths)} widths: {widths}")
    for policy in policies:
        plain, plain_losses = run_policy(policy, data, batches, cached=False)
        cached, cached_losses = run_policy(policy, data, batches, cached=True)
        base = sum(cpu for _, cpu, _ in plain) / len(plain)
        for side, epochs in (("uncached", plain), ("cached", cached)):
            for e, (wall, cpu, s) in enumerate(epochs):
                line = f"{policy} {side} epoch {e + 1}: {wall:.2f} s ({cpu:.2f} s CPU"
                line += f", {cpu / base:.2f}x)" if s else ")"
                if s:
                    line += (
                        f"; {s.captures} captures, {s.capture_seconds:.2f} s; "
                        f"{s.hits} hits, {s.misses} misses"
                    )
                print(line, flush=True)
        same = all(map(torch.equal, plain_losses, cached_losses))
        print(f"{policy}: losses equal bit for bit: {same}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(POLICIES))
