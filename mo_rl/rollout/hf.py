"""Rollouts from the live transformers model: a lean sampling loop (the default) or transformers ``generate``.

Both return the same ``RolloutBatch``; ``sampler="generate"`` keeps the library path selectable, for comparison
and for models whose cache the loop cannot repeat or trim (it falls back where it can, see ``sampler.py``).
"""

from __future__ import annotations

import torch

from mo_rl.errors import choice_error
from mo_rl.models.policy import stop_ids
from mo_rl.rollout.base import RolloutBatch, SamplingParams, completion_mask, register_engine
from mo_rl.rollout.sampler import sample

SAMPLERS = ("loop", "generate")


class HFEngine:
    """Samples from the live ``Policy`` object, so ``sync_weights`` has nothing to do.

    ``sampler``: ``loop`` (``mo_rl.rollout.sampler``: 2.6-3.8x faster for the tiny model on CPU, level at
    10M parameters where the matmuls dominate; docs/benchmarks.md) or
    ``generate``. ``min_new_tokens``: EOS is masked for that many steps (benchmarks force a fixed length with it;
    the sampling log-probs then come from the masked distribution).
    """

    shares_policy_module = True  # samples the trainer's module itself: sharded training gathers it around sampling

    def __init__(self, policy, sampler: str = "loop", min_new_tokens: int = 0):
        if sampler not in SAMPLERS:
            raise choice_error("HFEngine sampler", sampler, SAMPLERS)
        self.policy, self.tok, self.sampler, self.min_new_tokens = policy, policy.tokenizer, sampler, min_new_tokens
        self.stops = stop_ids(self.tok, policy.module)  # the stop rule vLLM follows too

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> RolloutBatch:
        enc = self.policy.encode(prompts)
        with self.policy.mode(False), self.policy.compute():  # eval() only where it changes what the model computes
            run = self._loop if self.sampler == "loop" else self._generate
            ids, lp = run(enc, n, params)
        mask = completion_mask(ids, self.stops)
        logprobs = torch.where(mask > 0, lp, torch.zeros_like(lp))  # padding may sit outside top-p: -inf
        ids = ids.masked_fill(mask == 0, self.tok.pad_token_id)
        return RolloutBatch(
            prompt_ids=enc["input_ids"].repeat_interleave(n, 0),
            prompt_mask=enc["attention_mask"].repeat_interleave(n, 0),
            completion_ids=ids, completion_mask=mask, logprobs=logprobs,
            texts=self.tok.batch_decode(ids, skip_special_tokens=True), n=n, min_new_tokens=self.min_new_tokens,
        )

    def _loop(self, enc, n: int, params: SamplingParams):
        dev = enc["input_ids"].device
        # one generator per prompt: a data-parallel rank sampling a slice of the step draws what one process does
        gen = [torch.Generator(device=dev).manual_seed(params.prompt_seed(i, n)) for i in range(len(enc["input_ids"]))]
        return sample(self.policy.decoder(), enc["input_ids"], enc["attention_mask"], n, max_new_tokens=params.max_new_tokens,
                      temperature=params.temperature, top_p=params.top_p, eos_id=self.stops,
                      pad_id=self.tok.pad_token_id, generator=gen, min_new_tokens=self.min_new_tokens)

    def _generate(self, enc, n: int, params: SamplingParams):
        # generate draws from the one global generator: per-prompt seeds cannot apply (nor data-parallel equality)
        torch.manual_seed(params.prompt_seed(0, n))
        out = self.policy.module.generate(
            **enc, do_sample=True, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=0, num_return_sequences=n, return_dict_in_generate=True, output_scores=True,
            pad_token_id=self.tok.pad_token_id, eos_token_id=self.stops,
            min_new_tokens=self.min_new_tokens,
        )
        ids = out.sequences[:, enc["input_ids"].shape[1]:]
        # scores are the processed logits the sampler drew from (temperature and top-p applied)
        scores = torch.stack(out.scores, 1).float().log_softmax(-1)
        return ids, scores.gather(-1, ids.unsqueeze(-1)).squeeze(-1)

    def sync_weights(self, policy) -> None:
        return None


@register_engine("hf")
def hf_engine(policy, **vllm_knobs) -> HFEngine:
    """``make_engine("hf", policy)``: the rollout group's other knobs (``RolloutConfig.engine_options``) are vllm's."""
    return HFEngine(policy)
