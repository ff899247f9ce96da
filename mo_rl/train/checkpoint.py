"""Checkpoints and resume: everything a run needs to continue exactly where it stopped, written atomically.

``<run_dir>/checkpoints/step-<N>/`` holds the state after ``N`` completed steps (the next step to run is ``N``):
``state.pt`` (policy weights, optimizer state, RNG states, reward-failure log, engine state if it has one; under
``trainer.strategy=fsdp`` the weights and optimizer state are every rank's shards in ``dcp/`` instead: the strategy
writes and reads them, ``strategy.py``), ``meta.json`` (step, elapsed time, the strategy and world size that wrote
it) and, written last, ``manifest.json`` (each file's size and CRC-32, computed while it is written where the
writer can: no second read). ``save_checkpoint`` and ``restore_run`` are the one writer and the one restore of
every strategy. A checkpoint is built under ``.step-<N>.tmp``, fsynced, then swapped in
(``files.replace_dir``: a step saved again keeps its old copy aside as ``.step-<N>.old`` until the new one is in
place), so a crash mid-write leaves only a ``.tmp`` that the writer or the next resume removes, and a crash
mid-swap an aside copy that the next resume puts back. A checkpoint damaged afterwards (a
truncated copy, a deleted or edited file) fails its manifest: resume then says so and falls back to the newest
checkpoint that passes (``usable_checkpoint``). CRC-32 finds truncation and corruption at ~2x sha256's speed; it is
no defence against deliberate tampering (``weights_only`` loading is what keeps a checkpoint from running code).
``checkpoints/final/`` is separate: a ``from_pretrained`` directory of the final policy.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sys
import zlib
from pathlib import Path

import torch

from mo_rl.errors import MoRLError
from mo_rl.files import atomic_write, fsync_dir, recover_dir, replace_dir

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


def rng_state() -> dict:
    """Python, torch CPU and (if present) CUDA generator states."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Checksummed:
    """A binary file wrapper that counts and CRCs what ``torch.save`` writes through it."""

    def __init__(self, f):
        self.f, self.size, self.crc = f, 0, 0

    def write(self, b) -> int:
        self.size += len(b)
        self.crc = zlib.crc32(b, self.crc)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()

    def entry(self) -> dict:
        return {"size": self.size, "crc32": self.crc}


class StateFile:
    """How a checkpoint's state is stored by one process: ``state.pt`` (a dict through ``torch.save``). The training
    strategies (``strategy.py``) extend it: ddp writes the same file from rank 0, fsdp adds every rank's shards."""

    lead = True  # this process writes meta.json and the manifest, and swaps the checkpoint in

    def barrier(self) -> None:
        """Between the steps of a checkpoint that several ranks write; none here."""

    def write_state(self, tmp: Path, state: dict) -> dict:
        """Write ``state`` into ``tmp``, fsynced. -> the manifest entries of the files it checksummed as it wrote."""
        with open(tmp / "state.pt", "wb") as f:
            w = _Checksummed(f)
            torch.save(state, w)
            f.flush()
            os.fsync(f.fileno())
        return {"state.pt": w.entry()}

    def read_state(self, path: Path, model=None, opt=None) -> dict:
        """The state as written; ``model`` and ``opt`` give a sharded state its layout (unused here)."""
        return load_checkpoint(path)[0]


def save_checkpoint(root: Path, step: int, state: dict, meta: dict, keep: int, store: StateFile = StateFile()) -> Path:
    """Write ``root/step-<step>/`` atomically (manifest last), then delete all but the newest ``keep`` step
    checkpoints. On any failure (a full disk, a signal) the half-built ``.tmp`` is removed and earlier
    checkpoints are untouched. ``store`` writes ``state``; when several ranks write (fsdp) every rank calls this
    and rank 0 (``store.lead``) alone writes the rest once every rank's part is on disk."""
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if store.lead:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    store.barrier()
    current = tmp / "state.pt"  # named by a disk-full message (torch.save's own error names no file)
    try:
        files = store.write_state(tmp, state)  # collective for fsdp
        if store.lead:
            text = json.dumps({"step": step, **meta}) + "\n"
            current = tmp / "meta.json"
            atomic_write(current, text)
            files["meta.json"] = {"size": len(text.encode()), "crc32": zlib.crc32(text.encode())}
            current = tmp / MANIFEST
            atomic_write(current, json.dumps({"checksum": "crc32", "files": _entries(tmp, files)}, indent=1) + "\n")
            fsync_dir(tmp)
            # the same step saved again (a resume that fell back past a damaged step-N): old copy aside until in
            replace_dir(tmp, final)
    except BaseException as e:
        if store.lead:
            shutil.rmtree(tmp, ignore_errors=True)
        if not getattr(e, "filename", None):
            e.filename = str(current)
        raise
    store.barrier()  # no rank goes on (and may save again) before the checkpoint is in place
    if store.lead:
        prune_steps(root, max(keep, 1))  # keep=0 still keeps this one until the run completes
    return final


def _entries(tmp: Path, known: dict) -> dict:
    """Every file under ``tmp`` (shards included: resume checks them all), the ones not checksummed while written
    read back."""
    return {name: known.get(name) or {"size": f.stat().st_size, "crc32": _crc(f)}
            for f in sorted(tmp.rglob("*")) if f.is_file() and (name := f.relative_to(tmp).as_posix()) != MANIFEST}


def _crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def verify_checkpoint(path: Path) -> str | None:
    """-> None when ``path`` matches its manifest (every file there, same size, same CRC) and its meta.json parses,
    else what is wrong. A checkpoint written before manifests existed is checked by loading alone."""
    path = Path(path)
    reading = MANIFEST
    try:
        manifest = json.loads((path / MANIFEST).read_text()) if (path / MANIFEST).exists() else {"files": {}}
        for name, want in manifest["files"].items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != want["size"]:
                return f"{name} has {f.stat().st_size} bytes, its manifest says {want['size']}"
            if _crc(f) != want["crc32"]:
                return f"{name} does not match its checksum"
        reading = "meta.json"
        if not isinstance(json.loads((path / "meta.json").read_text()).get("step"), int):
            return "meta.json has no step"
    except FileNotFoundError as e:
        return f"{Path(e.filename).name} is missing"
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
        return f"{reading} is not valid ({type(e).__name__})"
    return None


def usable_checkpoints(run_dir: Path):
    """Step checkpoints newest first, each as (path, None) if it passes ``verify_checkpoint`` or (path, problem)."""
    for path in reversed(step_checkpoints(Path(run_dir) / "checkpoints")):
        yield path, verify_checkpoint(path)


def usable_checkpoint(run_dir: Path, warn: bool = False) -> Path | None:
    """The newest checkpoint that passes its manifest; ``warn``: say on stderr which ones were skipped and why."""
    latest_checkpoint(run_dir)  # removes .tmp leftovers
    skipped = []
    for path, problem in usable_checkpoints(run_dir):
        if problem is None:
            _warn_skipped(skipped, path, warn)
            return path
        skipped.append((path, problem))
    _warn_skipped(skipped, None, warn)
    return None


def _warn_skipped(skipped, chosen: Path | None, warn: bool) -> None:
    if not (warn and skipped):
        return
    to = f"resuming from {chosen.name}" if chosen else "no intact checkpoint is left: starting again from step 0"
    for path, problem in skipped:
        print(f"warning: checkpoint {path} is damaged ({problem}); {to}", file=sys.stderr)


def step_checkpoints(root: Path) -> list[Path]:
    """Complete ``step-<N>`` directories under ``root``, oldest first (``.tmp`` leftovers are not listed)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete step checkpoint of a run, after tidying what a crash left: an old copy (a step or
    ``final``) set aside by an interrupted swap goes back in place (``files.recover_dir``), half-written ``.tmp``
    leftovers are removed."""
    root = Path(run_dir) / "checkpoints"
    for old in root.glob(".*.old") if root.is_dir() else []:
        recover_dir(old.with_name(old.name[1:-len(".old")]))
    for tmp in root.glob(".step-*.tmp") if root.is_dir() else []:
        shutil.rmtree(tmp, ignore_errors=True)
    found = step_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> tuple[dict, dict]:
    """-> (state dict as saved, meta). Loaded with ``weights_only`` so a checkpoint cannot run code."""
    state = torch.load(path / "state.pt", map_location=device, weights_only=True)
    return state, json.loads((path / "meta.json").read_text())


def truncate_jsonl(path: Path, step: int) -> list[dict]:
    """Keep only the rows with ``row["step"] < step`` (atomic rewrite), so a resumed step is never logged twice.

    A line cut off by a crash (no newline, not JSON) is dropped too. Returns the kept rows.
    """
    if not path.is_file():
        return []
    kept, lines = [], []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", step) < step:
            kept.append(row)
            lines.append(line)
    atomic_write(path, "".join(f"{x}\n" for x in lines))
    return kept


def prune_steps(root: Path, keep: int = 0) -> None:
    """Delete all but the newest ``keep`` step checkpoints under ``root`` (``final`` is not one); ``keep=0``: a
    completed run with ``trainer.keep_checkpoints=0``."""
    steps = step_checkpoints(root)
    for old in steps[:max(len(steps) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)


def check_steps(run_dir: Path, steps: int) -> None:
    """Refuse to resume with fewer ``trainer.steps`` than the last checkpoint already has, or a completed run whose
    step checkpoints were pruned (it would start again from step 0); checked before any file of the run is touched."""
    path = usable_checkpoint(run_dir)
    summary = Path(run_dir) / "summary.json"
    if path is None and summary.is_file() and json.loads(summary.read_text()).get("status") == "completed":
        raise MoRLError(f"run {str(run_dir)!r} completed and kept no step checkpoint (trainer.keep_checkpoints=0): "
                        "there is nothing to continue it from; its model is in checkpoints/final (start a new run "
                        "from it with model.path=..., or choose another run_name)")
    done = json.loads((path / "meta.json").read_text())["step"] if path else 0
    if done > steps:
        raise MoRLError(f"trainer.steps={steps} is below the {done} steps the run to resume has done ({path}); "
                        f"give trainer.steps >= {done}")


def save_run(run, step: int, elapsed: float) -> Path:
    """Checkpoint a ``loop.Run`` after ``step`` completed steps (``elapsed`` s of training so far); called by every
    rank that ``run.strategy.writes_checkpoints``."""
    s = run.strategy
    extras = {"rng": rng_state(), "failures": run.failures.entries}
    if hasattr(run.engine, "state_dict"):  # optional: the HF engine keeps nothing between steps
        extras["engine"] = run.engine.state_dict()
    state = s.training_state(run.policy.module, run.opt, extras)
    meta = {"elapsed": elapsed, "strategy": s.name, "world": run.dist.world}
    return save_checkpoint(run.writer.path / "checkpoints", step, state, meta, run.cfg.trainer.keep_checkpoints, s)


def restore_run(run) -> tuple[int, float, dict]:
    """Every rank: continue a ``loop.Run`` from its directory's last complete checkpoint (or from step 0 if it has
    none): rank 0 chooses it, every rank loads it (fsdp: its shards, in this world's layout, whatever world wrote
    them): weights, optimizer, RNG states, failure log, engine state. Rank 0 truncates ``metrics.jsonl`` and
    ``samples.jsonl`` to it, so no step is logged twice. -> (next step, elapsed s, last kept metrics row or {})."""
    from mo_rl.train import distributed as dp

    d, s, step, elapsed = run.dist, run.strategy, 0, 0.0
    path = dp.broadcast_object(d, usable_checkpoint(run.writer.path, warn=True) if d.lead else None)
    if path is not None:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("strategy", "ddp") != s.name:  # checkpoints from before meta named it: ddp's
            raise MoRLError(f"checkpoint {path} was not written with trainer.strategy={s.name} (it was with "
                            f"{meta.get('strategy', 'ddp')}); resume it with the strategy that wrote it")
        step, elapsed = int(meta["step"]), float(meta["elapsed"])
        state = s.read_state(path, run.policy.module, run.opt)  # on CPU: RNG states must be CPU tensors
        s.load_training_state(state, run.policy.module, run.opt)
        set_rng_state(state["rng"])
        run.failures.entries = state.get("failures", {})
        if "engine" in state and hasattr(run.engine, "load_state_dict"):
            run.engine.load_state_dict(state["engine"])
        s.sync_engine(run.policy, run.engine)  # an engine with its own copy of the weights samples the restored ones
    last = _truncate_logs(run, step) if d.lead else {}
    return step, elapsed, dp.broadcast_object(d, last)


def _truncate_logs(run, step: int) -> dict:
    rows = truncate_jsonl(run.writer.path / "metrics.jsonl", step)
    truncate_jsonl(run.writer.path / "samples.jsonl", step)
    if run.failures.entries:
        run.failures.write(run.writer.path)
    else:
        (run.writer.path / "errors.json").unlink(missing_ok=True)
    return rows[-1] if rows else {}
