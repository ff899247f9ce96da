"""A lean autoregressive sampler for the HF engine: KV cache, one prefill per prompt, last-position logits only.

transformers' ``generate`` is general (beam search, dozens of logits processors, stopping criteria, streamers); on a
CPU and a small policy its bookkeeping costs as much as the model itself. This loop keeps only what a rollout needs:

- the prompts are prefilled once each and their KV cache is then repeated ``n`` times (``generate`` prefills every
  one of the ``n`` copies);
- each step runs the model on one new token per live row and keeps the logits of that position only;
- rows that reached EOS leave the batch (their cache rows are dropped), so no compute goes to padding;
- temperature, then top-p, shape the distribution exactly as ``generate`` does (the sampling log-probs are those of
  this processed distribution), and a token is drawn with the exponential race ``argmax(p / E)``, E ~ Exp(1), from
  one seeded ``torch.Generator``: an exact draw from ``p``, cheaper than ``torch.multinomial`` on small vocabularies,
  and the same seed gives the same completions whichever rows finished early.
"""

from __future__ import annotations

import torch
from torch import Tensor

from transformers.modeling_outputs import CausalLMOutputWithPast

COMPACT_SHARE = 0.25  # drop finished rows once they are this share of the live batch: a cache copy each time
# transformers 5.x renamed the cache argument and output field (``past_key_values`` -> ``cache``); older versions
# only know the old name
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def top_p_filter(logits: Tensor, top_p: float) -> Tensor:
    """Mask (to -inf) the tokens outside the smallest set whose probability reaches ``top_p``. logits: (N, V).

    A token is kept when the probability of the tokens ranked above it is below ``top_p``: the top token always
    stays, and ties at the boundary resolve as in transformers' ``TopPLogitsWarper``.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    above = probs.cumsum(-1) - probs  # probability mass ranked strictly above each token
    drop_sorted = above >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def draw(logprobs: Tensor, race: Tensor) -> Tensor:
    """One token per row from ``exp(logprobs)`` by the exponential race. logprobs, race (i.i.d. Exp(1)): (N, V).

    ``argmax_i p_i / E_i`` is distributed as ``p`` (the first of independent exponential clocks with rates ``p_i``
    to ring); in logs, ``argmax (log p_i - log E_i)``, and -inf entries (outside top-p) can never win. -> (N,) long.
    """
    return (logprobs - race.log()).argmax(-1)


def _positions(mask: Tensor) -> Tensor:
    """Position ids that follow the attention mask, as the training forward computes them. (N, L) -> (N, L)."""
    return (mask.cumsum(1) - 1).clamp_min(0)


def _prefill(model, input_ids: Tensor, attention_mask: Tensor, n: int):
    """Run the prompts once and repeat their cache ``n`` times (prompt-major). -> (last logits (N, V), cache)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=_positions(attention_mask),
                use_cache=True, logits_to_keep=1)
    cache, logits = getattr(out, CACHE_KEY), out.logits[:, -1]
    if n == 1:
        return logits, cache
    if hasattr(cache, "batch_repeat_interleave"):
        cache.batch_repeat_interleave(n)
        return logits.repeat_interleave(n, 0), cache
    # a cache type that cannot be repeated: prefill every copy, as generate does
    ids, mask = input_ids.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], getattr(out, CACHE_KEY)


@torch.no_grad()
def sample(model, input_ids: Tensor, attention_mask: Tensor, n: int, *, max_new_tokens: int, temperature: float,
           top_p: float, eos_id: int, pad_id: int, generator: torch.Generator | list[torch.Generator],
           min_new_tokens: int = 0) -> tuple[Tensor, Tensor]:
    """Sample ``n`` completions per prompt.

    Args:
        input_ids, attention_mask: (B, P) long, left-padded prompts.
        min_new_tokens: EOS is masked out for the first ``min_new_tokens`` steps (as transformers' processor).
        generator: one for the whole batch, or a list of one per prompt (see ``_noise``).
    Returns:
        ids: (B*n, T) long, prompt-major, ``pad_id`` after each row's first EOS; T <= max_new_tokens is the step at
        which the last row stopped. logprobs: (B*n, T) float32, the log-prob of each sampled token under the
        processed (temperature, top-p) distribution; 0 after EOS.
    """
    logits, cache = _prefill(model, input_ids, attention_mask, n)
    N = logits.shape[0]
    mask = attention_mask.repeat_interleave(n, 0)
    # without left padding the causal mask is implied, and building a 4-D mask each step costs a small model ~20%
    padded = not bool(attention_mask.all())
    pos = mask.sum(1, keepdim=True) - 1  # (N, 1): the last prompt position of each row
    ids = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=logits.device)
    lps = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=logits.device)
    live = torch.arange(N, device=logits.device)  # batch row -> output row
    done = torch.zeros(N, dtype=torch.bool, device=logits.device)  # per batch row: EOS already sampled
    steps = 0
    for t in range(max_new_tokens):
        steps = t + 1
        scaled = logits.float() / temperature
        if t < min_new_tokens:
            scaled[:, eos_id] = float("-inf")
        logp = top_p_filter(scaled, top_p).log_softmax(-1)
        # noise for all N rows every step, so the draws of a row do not depend on which other rows finished
        race = _noise(generator, N, logp.shape[1], logp.device)
        tok = draw(logp, race[live])
        ids[live, t] = tok
        lps[live, t] = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
        done |= tok == eos_id
        if bool(done.all()) or t + 1 == max_new_tokens:
            break
        pos = pos + 1
        if padded:
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], 1)
        if int(done.sum()) >= max(1.0, COMPACT_SHARE * len(live)):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            live, tok, mask, pos, done = live[keep], tok[keep], mask[keep], pos[keep], done[keep]
        out = model(input_ids=tok.unsqueeze(1), attention_mask=mask if padded else None, position_ids=pos,
                    use_cache=True, logits_to_keep=1, **{CACHE_KEY: cache})
        logits, cache = out.logits[:, -1], getattr(out, CACHE_KEY)
    return _after_eos(ids[:, :steps], lps[:, :steps], eos_id, pad_id)


def _noise(generator: torch.Generator | list[torch.Generator], N: int, V: int, device) -> Tensor:
    """i.i.d. Exp(1) noise (N, V). A list holds one generator per prompt, each drawing its prompt's rows, so a
    prompt's draws do not depend on which other prompts share the batch (data-parallel ranks take slices)."""
    if isinstance(generator, torch.Generator):
        return torch.empty((N, V), device=device).exponential_(1.0, generator=generator)
    rows = N // len(generator)
    return torch.cat([torch.empty((rows, V), device=device).exponential_(1.0, generator=g) for g in generator])


def _after_eos(ids: Tensor, lps: Tensor, eos_id: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Rows kept in the batch after their EOS (below the compaction share) sampled on: pad and zero those."""
    is_eos = (ids == eos_id).int()
    after = (is_eos.cumsum(1) - is_eos) > 0
    return ids.masked_fill(after, pad_id), lps.masked_fill(after, 0.0)
