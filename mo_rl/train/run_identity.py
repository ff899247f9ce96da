"""Which run a directory holds, and whether a config may continue it: a run's identity is its config.yaml.

``config_hash`` names a config (every setting but where the run lives); ``same_run`` / ``holds_other_run`` tell a
sweep whether a job directory already holds this job (``hydra_app``); ``check_existing`` decides, before the model
loads, whether ``mo-rl train`` resumes a directory or refuses it (``trainer.resume``); ``resume_config`` is the
saved config with only ``config.SAFE_RESUME_KEYS`` overridden (``mo-rl train --resume``). The checkpoints such a
resume continues from are ``checkpoint.py``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mo_rl.config import SAFE_RESUME_KEYS  # the overrides a resumed run may change
from mo_rl.errors import MoRLError

# Keys that only say where the run lives: equal by construction when the same directory is reused.
_LOCATION_KEYS = ("output_dir", "experiment", "run_name")


def _flat(d, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; an empty dict stays a leaf so that adding one is a difference too."""
    if isinstance(d, dict) and d:
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _comparable(config: dict) -> dict:
    return {k: v for k, v in _flat(config).items() if k not in SAFE_RESUME_KEYS and k not in _LOCATION_KEYS}


def _identity(config: dict) -> dict:
    """Every key but where the run lives and what setup derives (``objectives.resolved``)."""
    return {k: v for k, v in _flat(config).items()
            if k not in _LOCATION_KEYS and not k.startswith("objectives.resolved")}


def config_dict(c) -> dict:
    """A typed ``Config`` as the plain dict config.yaml holds (before ``objectives.resolved`` is added)."""
    return OmegaConf.to_container(OmegaConf.structured(c))


def config_hash(config: dict) -> str:
    """6 hex digits of the config's identity (``_identity``): two runs differing in any setting differ here."""
    import hashlib

    text = json.dumps(_identity(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:6]


def read_saved_config(run_dir: Path) -> dict:
    """A run's config.yaml as a dict; a damaged one (not YAML, not a mapping) is one MoRLError naming it."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    path = Path(run_dir) / "config.yaml"
    try:
        data = OmegaConf.load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MoRLError(f"{str(path)!r} is damaged: not readable as YAML ({type(e).__name__}: {first}); restore "
                        "it from a copy, or move the run away") from e
    missing = [k for k in ("method", "task", "trainer") if not isinstance(data, DictConfig) or k not in data]
    if missing:
        raise MoRLError(f"{str(path)!r} is damaged: it lacks a run's settings ({', '.join(missing)}); restore it "
                        "from a copy, or move the run away")
    return OmegaConf.to_container(data)


def same_run(run_dir: Path, config: dict) -> bool:
    """Whether ``run_dir`` holds a run whose saved config equals ``config`` in every setting (``_identity``)."""
    try:
        return _identity(read_saved_config(run_dir)) == _identity(config)
    except MoRLError:  # no config.yaml, or a damaged one: not this run
        return False


def holds_other_run(run_dir: Path, config: dict) -> bool:
    """Whether ``run_dir`` holds a run that ``config`` could not continue: a config differing beyond
    ``SAFE_RESUME_KEYS`` (``objectives.resolved`` aside: ``config`` may not have it yet), a damaged config.yaml,
    or a run's files without one. A directory whose run did nothing holds none (``check_existing``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        return bool(_run_files(run_dir))
    if _did_nothing(run_dir):
        return False
    try:
        saved = read_saved_config(run_dir)
    except MoRLError:
        return True

    def settings(d: dict) -> dict:
        return {k: v for k, v in _comparable(d).items() if not k.startswith("objectives.resolved")}

    return settings(saved) != settings(config)


def check_existing(run_dir: Path, config: dict, mode: str) -> bool:
    """Decide what to do with a run directory that may already hold a run. -> True to resume from it.

    ``mode`` is ``trainer.resume``: ``auto`` resumes when the earlier run wrote a config (from its last checkpoint,
    or from step 0 when it has none) and refuses when that config differs in anything but ``SAFE_RESUME_KEYS``;
    ``never`` refuses any directory that already holds a run. A directory whose run logged no step and saved no
    checkpoint (it failed at its start) is started afresh, whatever its config was. A run's files without a
    config.yaml (deleted or lost) are refused: nothing can tell whether they belong to this config.
    """
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        found = _run_files(run_dir)
        if found:
            raise MoRLError(f"run dir {str(run_dir)!r} holds an earlier run ({', '.join(found)}) but no config.yaml, "
                            "so it can be neither checked nor continued; move it away, or choose another run_name")
        return False
    if _did_nothing(run_dir):  # nothing to continue or protect: an earlier start that failed before its first step
        for name in ("errors.json", "samples.jsonl", "metrics.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
        return False
    if mode == "never":
        raise MoRLError(f"run dir {str(run_dir)!r} exists (trainer.resume=never); choose another run_name, "
                        "or set trainer.resume=auto to continue it")
    old = _comparable(read_saved_config(run_dir))
    new = _comparable(config)
    diff = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not _added_default(k, old, new))
    if diff:
        k = diff[0]
        raise MoRLError(f"run dir {str(run_dir)!r} exists with a different config ({k}: {old.get(k)!r} -> "
                        f"{new.get(k)!r}); choose another run_name, or resume it with mo-rl train --resume")
    return True


def _added_default(key: str, old: dict, new: dict) -> bool:
    """A key the earlier run's config predates (a section added to mo-rl since, e.g. ``directive``), at its
    default now: no difference (the earlier run trained with that default's behaviour)."""
    if key in old:
        return False
    from mo_rl.config import Config

    defaults = _flat(OmegaConf.to_container(OmegaConf.structured(Config)))
    return key in defaults and defaults[key] == new.get(key)


def _run_files(run_dir: Path) -> list[str]:
    """The files of a run that ``run_dir`` holds: a non-empty metrics.jsonl or samples.jsonl, checkpoints/,
    summary.json."""
    found = [n for n in ("metrics.jsonl", "samples.jsonl") if (run_dir / n).is_file() and (run_dir / n).stat().st_size]
    found += [n for n in ("summary.json",) if (run_dir / n).is_file()]
    return found + (["checkpoints/"] if (run_dir / "checkpoints").is_dir() else [])


def _did_nothing(run_dir: Path) -> bool:
    """No step logged and no checkpoint: the directory holds only a config (and maybe a failed summary)."""
    metrics = run_dir / "metrics.jsonl"
    return not (metrics.is_file() and metrics.stat().st_size) and not (run_dir / "checkpoints").is_dir()


def resume_config(run_dir: str | Path, overrides: list[str]) -> DictConfig:
    """The config of an existing run (its ``config.yaml``) with ``overrides`` limited to ``SAFE_RESUME_KEYS``."""
    from mo_rl.config import Config, register_configs

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise MoRLError(f"--resume {str(run_dir)!r} is not a run directory (no config.yaml there)")
    for ov in overrides:
        key = ov.split("=", 1)[0].lstrip("+~")
        if key not in SAFE_RESUME_KEYS or "=" not in ov:
            raise MoRLError(f"cannot override {ov!r} when resuming; allowed: {', '.join(SAFE_RESUME_KEYS)} "
                            "(start a new run to change anything else)")
    register_configs()
    saved = OmegaConf.create(read_saved_config(run_dir))
    (saved.get("objectives") or {}).pop("resolved", None)  # derived at setup, not part of the schema
    return OmegaConf.merge(OmegaConf.structured(Config), saved,
                           OmegaConf.from_dotlist([ov.lstrip("+~") for ov in overrides]))
