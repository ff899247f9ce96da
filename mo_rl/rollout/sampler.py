"""A lean autoregressive sampler for the HF engine: KV cache, one prefill per prompt, last-position logits only.

transformers' ``generate`` is general (beam search, dozens of logits processors, stopping criteria, streamers); on a
CPU and a small policy its bookkeeping costs as much as the model itself. This loop keeps only what a rollout needs:

- the prompts are prefilled once each and their KV cache is then repeated ``n`` times (``generate`` prefills every
  one of the ``n`` copies);
- each step runs the model on one new token per live row and keeps the logits of that position only; for the
  Llama family the model runs through ``mo_rl.models.lean`` (a static cache, fused projections, no HF
  bookkeeping), for any other architecture through its own forward and cache classes (``Policy.decoder``);
- rows that reached EOS leave the batch (their cache rows are dropped), so no compute goes to padding;
- temperature, then top-p, shape the distribution exactly as ``generate`` does (the sampling log-probs are those of
  this processed distribution), and a token is drawn with the exponential race ``argmax(p / E)``, E ~ Exp(1), from
  seeded ``torch.Generator``s (``_Noise``): an exact draw from ``p``, cheaper than ``torch.multinomial`` on small
  vocabularies, and the same seed gives the same completions whichever rows finished early.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mo_rl.models.policy import top_p_filter

COMPACT_SHARE = 0.25  # drop finished rows once they are this share of the live batch: a cache copy each time


def draw(logprobs: Tensor, log_race: Tensor) -> Tensor:
    """One token per row from ``exp(logprobs)`` by the exponential race. logprobs, log_race: (N, V), log_race the
    log of i.i.d. Exp(1) noise.

    ``argmax_i p_i / E_i`` is distributed as ``p`` (the first of independent exponential clocks with rates ``p_i``
    to ring); in logs, ``argmax (log p_i - log E_i)``, and -inf entries (outside top-p) can never win. -> (N,) long.
    """
    return (logprobs - log_race).argmax(-1)


@torch.no_grad()
def sample(decoder, input_ids: Tensor, attention_mask: Tensor, n: int, *, max_new_tokens: int, temperature: float,
           top_p: float, eos_id: int | list[int], pad_id: int, generator: torch.Generator | list[torch.Generator],
           min_new_tokens: int = 0) -> tuple[Tensor, Tensor]:
    """Sample ``n`` completions per prompt.

    Args:
        decoder: ``Policy.decoder()``: ``prefill`` / ``decode`` / ``select`` (the lean forward or the HF one).
        input_ids, attention_mask: (B, P) long, left-padded prompts.
        eos_id: the stop token id, or several (``base.stop_ids``): a row ends at the first of any.
        min_new_tokens: the stop tokens are masked out for the first ``min_new_tokens`` steps (as transformers'
            processor; the batch records it, so the trainer's log-probs mask them too).
        generator: one for the whole batch, or a list of one per prompt (see ``_Noise``).
    Returns:
        ids: (B*n, T) long, prompt-major, ``pad_id`` after each row's first EOS; T <= max_new_tokens is the step at
        which the last row stopped. logprobs: (B*n, T) float32, the log-prob of each sampled token under the
        processed (temperature, top-p) distribution; 0 after EOS.
    """
    dec = decoder
    stops = torch.as_tensor(eos_id, device=input_ids.device).reshape(-1)
    logits, cache = dec.prefill(input_ids, attention_mask, n, input_ids.shape[1] + max_new_tokens)
    N = logits.shape[0]
    noise = _Noise(generator, N, logits.shape[1], max_new_tokens, logits.device)
    pos = attention_mask.sum(1).repeat_interleave(n, 0) - 1  # (N,): the last prompt position of each row
    ids = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=logits.device)
    lps = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=logits.device)
    live = torch.arange(N, device=logits.device)  # batch row -> output row
    done = torch.zeros(N, dtype=torch.bool, device=logits.device)  # per batch row: EOS already sampled
    steps = 0
    for t in range(max_new_tokens):
        steps = t + 1
        scaled = logits.float() if temperature == 1.0 else logits.float() / temperature
        if t < min_new_tokens:
            scaled[:, stops] = float("-inf")
        logp = top_p_filter(scaled, top_p).log_softmax(-1)
        log_race = noise.next()
        full = len(live) == N  # no row has left yet: plain column writes instead of scattered ones
        tok = draw(logp, log_race if full else log_race[live])
        lp = logp.gather(1, tok.unsqueeze(1)).squeeze(1)
        if full:
            ids[:, t], lps[:, t] = tok, lp
        else:
            ids[live, t], lps[live, t] = tok, lp
        done |= torch.isin(tok, stops)
        finished = int(done.sum())
        if finished == len(live) or t + 1 == max_new_tokens:
            break
        pos = pos + 1
        if finished >= max(1.0, COMPACT_SHARE * len(live)):
            keep = (~done).nonzero().squeeze(1)
            dec.select(cache, keep)
            live, tok, pos, done = live[keep], tok[keep], pos[keep], done[keep]
        logits = dec.decode(tok, pos, cache)
    return _after_eos(ids[:, :steps], lps[:, :steps], stops, pad_id)


NOISE_CHUNK = 2**22  # floats of noise drawn at once per generator (16 MiB): several steps' worth on small vocabularies


class _Noise:
    """log Exp(1) noise, (N, V) per step, drawn ahead in chunks of steps: ``log(-log U)``, U ~ Uniform[0, 1).

    A list of generators holds one per prompt, each drawing its prompt's ``rows`` rows, so a prompt's draws do not
    depend on which other prompts share the batch (data-parallel ranks take slices); the chunk length depends only
    on ``rows`` and ``V`` for the same reason. Noise covers all N rows every step, so the draws of a row do not
    depend on which other rows finished.
    """

    def __init__(self, generator: torch.Generator | list[torch.Generator], N: int, V: int, steps: int, device):
        self.gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
        self.rows, self.V, self.device = N // len(self.gens), V, device
        self.chunk = max(1, min(steps, NOISE_CHUNK // max(1, self.rows * V)))
        self.buf, self.at = None, 0

    def next(self) -> Tensor:
        if self.buf is None or self.at == self.buf.shape[0]:
            u = torch.cat([torch.rand((self.chunk, self.rows, self.V), generator=g, device=self.device)
                           for g in self.gens], 1)
            self.buf, self.at = u.log_().neg_().log_(), 0  # log E with E = -log U ~ Exp(1)
        self.at += 1
        return self.buf[self.at - 1]


def _after_eos(ids: Tensor, lps: Tensor, stops: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Rows kept in the batch after their EOS (below the compaction share) sampled on: pad and zero those."""
    is_eos = torch.isin(ids, stops).int()
    after = (is_eos.cumsum(1) - is_eos) > 0
    return ids.masked_fill(after, pad_id), lps.masked_fill(after, 0.0)
