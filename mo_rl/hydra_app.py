"""The thin ``@hydra.main`` entry behind ``mo-rl train -m``: Hydra's multirun, sweepers and launchers.

Each job trains into Hydra's job directory and appends one line to the sweep's ``manifest.jsonl`` (job number,
overrides, run directory, status, error). A failed job is recorded and does not stop the others.
"""

from __future__ import annotations

import itertools
import json
import sys
import warnings
from pathlib import Path

from mo_rl.config import compose, conf_dir, explain_compose_error, register_configs, validate
from mo_rl.errors import MoRLError


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """The override lists of every job of a basic sweep (``a=1,2 b=x,y`` -> 4 lists); hydra.* keys left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.lstrip("+~").startswith("hydra")])
    axes = []
    for o in parsed:
        key = o.get_key_element()
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        axes.append([f"{key}={v}" for v in values])
    return [list(c) for c in itertools.product(*axes)]


def prevalidate(overrides: list[str], limit: int = 256) -> int:
    """Compose and validate every job of the sweep before any starts; raises MoRLError on the first bad one."""
    jobs = expand_sweep(overrides)
    for job in jobs[:limit]:
        try:
            cfg = compose(job)
        except Exception as e:  # noqa: BLE001 - Hydra raises several types; each becomes one line
            raise MoRLError(explain_compose_error(e)) from e
        validate(cfg)
    return len(jobs)


_STATUSES: list[str] = []  # the statuses of this process's jobs, for launch() to report


def _job(cfg) -> str:
    from hydra.core.hydra_config import HydraConfig

    from mo_rl.train.loop import run_train

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    record = {"job": hc.job.num, "overrides": list(hc.overrides.task), "run_dir": str(run_dir)}
    try:
        run_train(cfg, run_dir=run_dir)
        record["status"] = "completed"
    except Exception as e:  # noqa: BLE001 - one failed job must not stop the sweep
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
        print(f"job {hc.job.num} failed: {record['error']}", file=sys.stderr)
    sweep_dir = Path(hc.sweep.dir) if hc.mode.name == "MULTIRUN" else run_dir
    with open(sweep_dir / "manifest.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    _STATUSES.append(record["status"])
    return record["status"]


def _sweep_dir(overrides: list[str]) -> Path:
    """The sweep directory of these overrides, resolved here (``${now:...}`` included) so that ``launch`` can pin it
    and read the manifest: jobs a launcher plugin runs in other processes or machines report their status only
    there."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hydra_keys = [o for o in overrides if o.lstrip("+~").startswith("hydra")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        cfg = hydra_compose("config", overrides=expand_sweep(overrides)[0] + hydra_keys, return_hydra_config=True)
    return Path(cfg.hydra.sweep.dir)


def _manifest(sweep_dir: Path) -> list[str]:
    path = sweep_dir / "manifest.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def launch(overrides: list[str], multirun: bool = True) -> list[str]:
    """Run Hydra's main with these overrides; -> each job's status (completed | failed), in order of completion."""
    import hydra

    register_configs()
    sweep_dir = _sweep_dir(overrides) if multirun else None
    seen = len(_manifest(sweep_dir)) if sweep_dir else 0  # a reused sweep dir keeps earlier sweeps' lines
    main = hydra.main(config_path=str(conf_dir()), config_name="config", version_base=None)(_job)
    argv = sys.argv
    pin = [f"hydra.sweep.dir='{sweep_dir}'"] if sweep_dir else []
    sys.argv = ["mo-rl-train", *(["--multirun"] if multirun else []), *overrides, *pin]
    _STATUSES.clear()
    try:
        with warnings.catch_warnings():
            # conf/hydra/launcher/ray.yaml stands in for the Ray plugin's config of the same name, which Hydra
            # then also validates it against (the deprecated automatic schema match): the keys are the plugin's
            warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/ray' is validated against ConfigStore")
            main()
    finally:
        sys.argv = argv
    if sweep_dir and not _STATUSES:  # the jobs ran elsewhere (submitit, ray): their statuses are in the manifest
        return [json.loads(line)["status"] for line in _manifest(sweep_dir)[seen:]]
    return list(_STATUSES)
