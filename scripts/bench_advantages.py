"""Time every registered advantage estimator against its per-group loop reference.

    python scripts/bench_advantages.py                  # CPU, sizes (64,8,2) (512,16,4) (4096,16,8)
    python scripts/bench_advantages.py --device cuda    # also a B*G >= 1e6 batch against the memory-bandwidth floor

Repeats are interleaved (batched, reference, batched, ...) so drift hits both paths alike; each cell is the
median over repeats. The speedup is reference time / batched time; the target is >= 50x at (512, 16, 4) on CPU.
On CUDA the floor is the bytes an estimator must move (rewards and mask read, advantages written) divided by the
device-to-device copy bandwidth measured in the same run; the target is within 3x of it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: tests/reference_loops.py

import mo_rl.advantages as A  # noqa: E402
from tests.reference_loops import REFERENCES  # noqa: E402

SIZES = [(64, 8, 2), (512, 16, 4), (4096, 16, 8)]
TARGET_SIZE, TARGET_SPEEDUP, TARGET_FLOOR = (512, 16, 4), 50.0, 3.0
SLOW_REF = 1.0  # seconds: a loop reference slower than this is timed once, and skipped at the larger sizes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inputs(B: int, G: int, K: int, device: torch.device, dtype=torch.float32):
    """Seeded rewards on a coarse grid (ties, like real rewards), normalized weights, a mask ~90% valid."""
    g = torch.Generator().manual_seed(B * 1000 + G * 10 + K)
    rewards = (torch.randint(0, 5, (B, G, K), generator=g).to(dtype) / 4 + torch.rand(B, G, K, generator=g) * 0.1)
    weights = torch.rand(K, generator=g) + 0.1
    mask = torch.rand(B, G, generator=g) < 0.9
    return rewards.to(device), (weights / weights.sum()).to(device, dtype), mask.to(device)


def bind(fn, K: int, device: torch.device):
    """fn(rewards, weights, mask) with the runtime context the estimator declares (seeded generator, names)."""
    params = inspect.signature(fn).parameters
    ctx = {"generator": torch.Generator(device=device).manual_seed(0), "objectives": [f"o{k}" for k in range(K)]}
    kw = {k: v for k, v in ctx.items() if k in params}
    return lambda r, w, m: fn(r, w, m, **kw)


def clock(fn, args, device: torch.device, inner: int) -> float:
    """Seconds per call, averaged over ``inner`` back-to-back calls."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn(*args)
    sync(device)
    return (time.perf_counter() - t0) / inner


def calibrate(fn, args, device: torch.device, budget: float = 0.02) -> int:
    """How many back-to-back calls fill ``budget`` seconds (at least 1), after a warm-up call."""
    fn(*args)
    return max(1, int(budget / max(clock(fn, args, device, 1), 1e-7)))


def bench_one(name: str, size, device: torch.device, repeats: int, ref_repeats: int) -> dict:
    B, G, K = size
    args = inputs(B, G, K, device)
    paths = {"batched": bind(A.get(name).fn, K, device)}
    try:
        inner = {"batched": calibrate(paths["batched"], args, device)}
    except Exception as err:  # e.g. a wrapper method that needs configuration to run at all
        return {"method": name, "size": size, "skipped": f"{type(err).__name__}: {err}"[:80]}
    times: dict[str, list[float]] = {p: [] for p in paths}
    if name in REFERENCES and ref_repeats > 0:
        paths["reference"] = bind(REFERENCES[name], K, device)
        times["reference"] = [clock(paths["reference"], args, device, 1)]  # one call: loops need no warm-up
    for i in range(repeats):
        for p, f in paths.items():
            if p == "reference" and (len(times[p]) >= ref_repeats or times[p][0] > SLOW_REF):
                continue
            times[p].append(clock(f, args, device, 1 if p == "reference" else inner[p]))
    row = {"method": name, "size": size, **{p: statistics.median(t) for p, t in times.items()}}
    if "reference" in row:
        row["speedup"] = row["reference"] / row["batched"]
    return row


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 28) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    x = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    y = torch.empty_like(x)
    y.copy_(x)
    t = statistics.median(clock(lambda: y.copy_(x), (), device, 10) for _ in range(5))
    return 2 * nbytes / t


def floor_seconds(size, bandwidth: float, dtype=torch.float32) -> float:
    B, G, K = size
    item = torch.empty((), dtype=dtype).element_size()
    return (B * G * K * item + B * G * 1 + B * G * item) / bandwidth


def fmt_ms(x) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def print_table(rows: list[dict]) -> None:
    cols = ["method", "B, G, K", "batched ms", "reference ms", "speedup"]
    lines = []
    for r in rows:
        size = "({}, {}, {})".format(*r["size"])
        if "skipped" in r:
            lines.append([r["method"], size, "skipped: " + r["skipped"]] + [""] * (len(cols) - 3))
            continue
        cells = [r["method"], size, fmt_ms(r["batched"])]
        lines.append(cells + [fmt_ms(r.get("reference")), f"{r['speedup']:.1f}x" if "speedup" in r else "-"])
    width = [max(len(str(x)) for x in col) for col in zip(cols, *lines)]
    print("| " + " | ".join(c.ljust(n) for c, n in zip(cols, width)) + " |")
    print("|" + "|".join("-" * (n + 2) for n in width) + "|")
    for cells in lines:
        print("| " + " | ".join(c.ljust(n) if k < 2 else c.rjust(n) for k, (c, n) in enumerate(zip(cells, width)))
              + " |")


def main(argv=None) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved repeats per cell (median reported)")
    ap.add_argument("--ref-repeats", type=int, default=3, help="repeats of the slow loop reference (0: skip it)")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of registered methods (default: all)")
    ap.add_argument("--big", type=int, nargs=3, default=(131072, 16, 8), metavar=("B", "G", "K"),
                    help="CUDA-only size timed against the bandwidth floor (B*G >= 1e6)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice; 1 is steadier on a shared machine)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda given but torch.cuda.is_available() is False")
    methods = a.methods or A.available()
    torch.set_grad_enabled(False)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | repeats {a.repeats} | "
          f"load average {load}")
    rows, slow = [], set()
    for size in SIZES:
        for m in methods:
            rows.append(bench_one(m, size, device, a.repeats, 0 if m in slow else a.ref_repeats))
            if rows[-1].get("reference", 0) > SLOW_REF and size != SIZES[-1]:
                slow.add(m)
    if slow:
        print(f"note: loop reference of {', '.join(sorted(slow))} took > {SLOW_REF:.0f} s; not timed at larger sizes")
    print_table(rows)
    short = [r["method"] for r in rows if tuple(r["size"]) == TARGET_SIZE and r.get("speedup", 1e9) < TARGET_SPEEDUP]
    print(f"target >= {TARGET_SPEEDUP:.0f}x at {TARGET_SIZE}: " + (f"MISSED by {', '.join(short)}" if short else "met"))
    if device.type == "cuda":
        bw = copy_bandwidth(device)
        floor = floor_seconds(a.big, bw)
        print(f"\ncopy bandwidth {bw / 1e9:.0f} GB/s; size {tuple(a.big)}; floor {floor * 1e6:.1f} us")
        print(f"| {'method':<16} | batched us | x floor |")
        for m in methods:
            r = bench_one(m, tuple(a.big), device, a.repeats, 0)
            if "skipped" in r:
                print(f"| {m:<16} | skipped: {r['skipped']} |")
                continue
            print(f"| {m:<16} | {r['batched'] * 1e6:10.1f} | {r['batched'] / floor:6.1f}x |")
        print(f"target: within {TARGET_FLOOR:.0f}x of the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
