"""Rollouts with transformers ``generate``: the CPU default, also correct on GPU."""

from __future__ import annotations

import torch

from mo_rl.rollout.base import RolloutBatch, SamplingParams, completion_mask


class HFEngine:
    """Samples from the live policy object, so ``sync_weights`` has nothing to do."""

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> RolloutBatch:
        dev = next(self.model.parameters()).device
        enc = self.tok(prompts, return_tensors="pt", padding=True).to(dev)
        torch.manual_seed(params.seed)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            **enc, do_sample=True, max_new_tokens=params.max_new_tokens, temperature=params.temperature,
            top_p=params.top_p, top_k=0, num_return_sequences=n, return_dict_in_generate=True, output_scores=True,
            pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id,
        )
        self.model.train(was_training)
        P = enc["input_ids"].shape[1]
        ids = out.sequences[:, P:]
        mask = completion_mask(ids, self.tok.eos_token_id)
        # scores are the processed logits the sampler drew from (temperature and top-p applied)
        scores = torch.stack(out.scores, 1).float().log_softmax(-1)
        lp = scores.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        logprobs = torch.where(mask > 0, lp, torch.zeros_like(lp))  # padding may sit outside top-p: -inf
        ids = ids.masked_fill(mask == 0, self.tok.pad_token_id)
        return RolloutBatch(
            prompt_ids=enc["input_ids"].repeat_interleave(n, 0),
            prompt_mask=enc["attention_mask"].repeat_interleave(n, 0),
            completion_ids=ids, completion_mask=mask, logprobs=logprobs,
            texts=self.tok.batch_decode(ids, skip_special_tokens=True), n=n,
        )

    def sync_weights(self, model) -> None:
        return None
