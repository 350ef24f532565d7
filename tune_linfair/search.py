"""Sweeps: ``python -m tune_linfair.search`` on Ray Tune + Optuna, results in Parquet.

With no argument it runs the embedded default (``search_spaces/default.yaml``: scikit-learn
digits, unbalanced, ``resnet_mini``) on the local CPU in a few minutes::

    python -m tune_linfair.search --objective pareto

Objectives (DESIGN.md section 7): ``pareto`` (validation accuracy max, validation
worst-group relative drop min, ReLU count min; Optuna multi-objective TPE), ``accuracy``,
``fairness`` (worst-group drop min) and ``grid`` (the space's grid, no search).

Every trial chains base (cached) -> linearize (cached) -> fine-tune -> evaluate and writes
one row to ``RUN/trials/``, per-group rows to ``RUN/groups/`` and per-sample rows to
``RUN/samples/`` (see :mod:`tune_linfair.results`). Errors a user can cause end with one
line and exit code 2.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import sys
import warnings
from pathlib import Path

from tune_linfair import results
from tune_linfair.config import SearchSpace, load_space, to_dict
from tune_linfair.errors import UserError

OBJECTIVES = {
    "pareto": (["val_accuracy", "val_worst_group_drop", "relu_count"], ["max", "min", "min"]),
    "accuracy": (["val_accuracy"], ["max"]),
    "fairness": (["val_worst_group_drop"], ["min"]),
    "grid": (None, None),
}
SWEEP_FILE = "sweep.json"


class _OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument ends with one ``error: ...`` line (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="python -m tune_linfair.search",
        description="Search ReLU budgets, the multiplier step mu and the learning rate for "
        "the Pareto front of accuracy vs worst-group accuracy drop vs ReLU count.",
    )
    p.add_argument("--objective", choices=sorted(OBJECTIVES), default="pareto")
    p.add_argument("--space", default="default", help="bundled space name or YAML path")
    p.add_argument("--trials", type=int, help="Optuna trials (default: the space's)")
    p.add_argument(
        "--run-dir", help="where results go (default: STORAGE/<space>-<objective>-<time>)"
    )
    p.add_argument("--storage-path", default="runs", help="shared storage: runs and artifact cache")
    p.add_argument(
        "--address", default="local", help="'local' (fresh Ray), 'auto' or a cluster address"
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument(
        "--gpus-per-trial", type=float, help="fractions allowed; default 1 if GPUs exist, else 0"
    )
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the space's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Optuna sampler")
    p.add_argument("--data-root", help="folder with the data set's files")
    p.add_argument("--download", action="store_true", help="download CIFAR-10/SVHN if missing")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --run-dir")
    p.add_argument("--no-dashboard", action="store_true", help="do not start Ray's dashboard")
    p.add_argument("--dashboard-host", default="127.0.0.1", help="dashboard bind address")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a space entry, e.g. --set base.epochs=5 --set grid.seed=[0,1]",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="Optuna constraint: validation accuracy at most this many points below the base",
    )
    return p


# -- preparation (no Ray) -----------------------------------------------------------------
def resolve_space(args: argparse.Namespace) -> SearchSpace:
    """The space of the sweep: ``--space`` with ``--set`` overrides, or, with ``--resume``,
    the space the sweep started with (``RUN/space.yaml``)."""
    if args.resume:
        return resumed_space(args)
    return load_space(args.space, list(args.set) + _data_overrides(args))


def _data_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.data_root:
        overrides.append(f"data.root={json.dumps(str(Path(args.data_root).resolve()))}")
    if args.download:
        overrides.append("data.download=true")
    return overrides


def resumed_space(args: argparse.Namespace) -> SearchSpace:
    """The saved space of the sweep in ``--run-dir`` (``--data-root``/``--download`` may
    still point at moved data). A resumed sweep must run the trials it started with: the
    same space means the same cache keys, so the base and linearized models are reused.
    Options the user did not repeat (``--trials``, ``--max-concurrent``, ``--seed``,
    ``--max-accuracy-drop``) are taken from the saved ``sweep.json``."""
    import yaml

    if not args.run_dir:
        raise UserError("--resume needs --run-dir: the sweep directory to continue")
    run_dir = Path(args.run_dir).expanduser().resolve()
    marker, saved_space = run_dir / SWEEP_FILE, run_dir / "space.yaml"
    if not marker.is_file() or not saved_space.is_file():
        raise UserError(f"nothing to resume: {run_dir} holds no sweep ({SWEEP_FILE} missing)")
    try:
        saved = json.loads(marker.read_text())
        raw = yaml.safe_load(saved_space.read_text())
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise UserError(f"cannot read the sweep record in {run_dir}: {err}") from None
    if not isinstance(saved, dict):
        raise UserError(f"{marker} is not a sweep record")
    if args.set:
        raise UserError(
            f"--resume continues the sweep with its saved space ({saved_space}); "
            f"drop --set {args.set[0]} (start a new --run-dir to change the space)"
        )
    if args.space not in ("default", saved.get("space")):
        raise UserError(
            f"--resume continues the sweep with its saved space {saved.get('space')!r}; "
            f"drop --space {args.space}"
        )
    before = saved.get("args") if isinstance(saved.get("args"), dict) else {}
    for name in ("trials", "max_concurrent", "max_accuracy_drop"):
        if getattr(args, name, None) is None and before.get(name) is not None:
            setattr(args, name, before[name])
    if isinstance(before.get("seed"), int):
        args.seed = before["seed"]
    from tune_linfair.config import apply_overrides, parse_space

    overrides = _data_overrides(args)
    if overrides and isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return parse_space(raw, str(saved.get("space", "space")))


def validate_args(args: argparse.Namespace, space: SearchSpace) -> None:
    for name in ("trials", "max_concurrent"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.cpus_per_trial <= 0:
        raise UserError(f"--cpus-per-trial must be positive, got {args.cpus_per_trial}")
    if args.gpus_per_trial is not None and args.gpus_per_trial < 0:
        raise UserError(f"--gpus-per-trial must be non-negative, got {args.gpus_per_trial}")
    if args.address == "local" and args.cpus_per_trial > (os.cpu_count() or 1):
        raise UserError(
            f"--cpus-per-trial {args.cpus_per_trial:g} asked, but this machine has "
            f"{os.cpu_count()} CPUs"
        )
    if args.address == "local" and args.gpus_per_trial:
        import torch

        have = torch.cuda.device_count()
        if have < args.gpus_per_trial:
            raise UserError(
                f"--gpus-per-trial {args.gpus_per_trial:g} asked, but this machine has "
                f"{have} CUDA GPUs"
            )
    if args.objective != "grid" and not any(isinstance(v, dict) for v in space.search.values()):
        raise UserError(f"space {space.name!r} has nothing to search; use --objective grid")
    for key in ("method", "budget"):
        if args.objective == "grid":
            if key not in space.grid and key not in space.search:
                raise UserError(f"space {space.name!r} gives no {key} (grid or search)")
        elif key not in space.search:
            raise UserError(f"space {space.name!r} gives no search.{key}")


def preflight(space: SearchSpace, objective: str) -> None:
    """Fail before Ray starts on what would fail every trial: missing data, a model that
    cannot take the data, budgets above the model's total, impossible DeepReDuce budgets."""
    from tune_linfair.linearize.budget import resolve_budget
    from tune_linfair.linearize.deepreduce import select_config
    from tune_linfair.models import create_model, total_relus
    from tune_linfair.stages import load_data

    exp = space.experiment
    seeds = _values(space, "seed", objective) or [0]
    data = load_data(exp, int(seeds[0]))
    model = create_model(
        exp.model.name, data.num_classes, data.input_shape, exp.model.width, exp.model.granularity
    )
    total = total_relus(model)
    methods = _values(space, "method", objective)
    budgets = _budget_values(space, objective)
    for budget in budgets:
        resolve_budget(budget, total)
    if "deepreduce" in methods and budgets:
        # Staged model required; budgets no configuration meets fail their own trials
        # (recorded as failed rows), unless no budget at all can be met.
        unmet = []
        for budget in budgets:
            try:
                select_config(model, budget)
            except UserError as err:
                if "below every DeepReDuce configuration" not in str(err):
                    raise
                unmet.append((budget, str(err)))
        if len(unmet) == len(budgets):
            raise UserError(unmet[0][1])
        for budget, _ in unmet:
            print(f"note: deepreduce cannot meet budget {budget}; those trials will fail")


def _values(space: SearchSpace, key: str, objective: str) -> list:
    if objective == "grid" and key in space.grid:
        return list(space.grid[key])
    spec = space.search.get(key)
    if spec is None:
        return []
    if isinstance(spec, dict):
        return list(spec.get("choices", []))
    return [spec]


def _budget_values(space: SearchSpace, objective: str) -> list:
    values = _values(space, "budget", objective)
    spec = space.search.get("budget")
    if objective != "grid" and isinstance(spec, dict) and "low" in spec:
        values = [spec["low"], spec["high"]]
    return values


def safe_name(name: str) -> str:
    """``name`` as one harmless path component: letters, digits, ``.``, ``_``, ``-`` only,
    no leading dot or dash (so ``../../evil`` becomes ``evil``). Space names come from
    YAML and ``--set``, and must never lead a run directory out of the storage path."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).lstrip("._-")
    return cleaned[:80] or "sweep"


def prepare_run_dir(args: argparse.Namespace, space: SearchSpace) -> tuple[Path, Path]:
    """Resolve (run_dir, storage_path); refuse to overwrite another sweep.

    The default run directory is ``STORAGE/<space>-<objective>-<time>`` with the space
    name made safe (:func:`safe_name`); an explicit ``--run-dir`` is taken as given.
    Writes nothing: :func:`create_run_dir` creates RUN once Ray is up (and, on ``--resume``,
    removes the hidden temporary files a killed writer may have left in the Parquet folders;
    readers skip them anyway, see :mod:`tune_linfair.results`).
    """
    storage = Path(args.storage_path).expanduser().resolve()
    if args.run_dir:
        run_dir = Path(args.run_dir).expanduser().resolve()
    elif args.resume:
        raise UserError("--resume needs --run-dir: the sweep directory to continue")
    else:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = storage / f"{safe_name(space.name)}-{args.objective}-{stamp}"
    for path, what in ((storage, "--storage-path"), (run_dir, "run directory")):
        if path.exists() and not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a directory")
        _check_creatable(path)
    marker = run_dir / SWEEP_FILE
    if args.resume:
        if not marker.is_file():
            raise UserError(f"nothing to resume: {run_dir} holds no sweep ({SWEEP_FILE} missing)")
        try:
            saved = json.loads(marker.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {marker}: {err}") from None
        if not isinstance(saved, dict) or saved.get("objective") != args.objective:
            objective = saved.get("objective") if isinstance(saved, dict) else None
            raise UserError(
                f"{run_dir} holds a {objective!r} sweep; resume it with --objective {objective}"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        what = "a sweep" if marker.is_file() else "other files"
        raise UserError(
            f"run directory {run_dir} already holds {what}; pass --resume to continue it "
            "or choose another --run-dir"
        )
    return run_dir, storage


def _check_creatable(path: Path) -> None:
    """UserError unless ``path`` exists or could be created: its nearest existing ancestor
    must be a writable directory (checked before Ray starts, without creating anything)."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == path:
        return
    if not ancestor.is_dir():
        raise UserError(f"cannot create {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: {ancestor} is not writable")


def create_run_dir(args: argparse.Namespace, run_dir: Path, storage: Path) -> None:
    """Create RUN and ``STORAGE/cache`` (checked by :func:`prepare_run_dir`; called once Ray
    is up and has the resources, so a refused sweep leaves nothing behind)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (storage / "cache").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        where = err.filename or run_dir
        raise UserError(f"cannot write to {where}: {err.strerror or err}") from None
    if args.resume:
        for table in results.TABLES:
            for tmp in (run_dir / table).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)


def write_sweep_record(run_dir: Path, args: argparse.Namespace, space: SearchSpace) -> None:
    """``sweep.json`` (the sweep's identity), ``command.txt``, ``space.yaml``, ``versions.json``."""
    import importlib.metadata as md

    import yaml

    command = "python -m tune_linfair.search " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("tune_linfair", "torch", "ray", "optuna", "pandas", "pyarrow", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    record = {
        "objective": args.objective,
        "space": space.name,
        "run_id": run_dir.name,
        "created": dt.datetime.now(dt.UTC).isoformat(),
        "args": vars(args),
    }
    if not (run_dir / SWEEP_FILE).exists():
        _atomic_text(run_dir / SWEEP_FILE, json.dumps(record, indent=1, default=str))
        _atomic_text(run_dir / "space.yaml", yaml.safe_dump(space.raw, sort_keys=False))
        _atomic_text(
            run_dir / "resolved_config.json", json.dumps(to_dict(space.experiment), indent=1)
        )
    with open(run_dir / "command.txt", "a") as f:
        f.write(command + "\n")
    _atomic_text(run_dir / "versions.json", json.dumps(versions, indent=1))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- Ray ----------------------------------------------------------------------------------
def start_ray(args: argparse.Namespace):
    """Start a fresh local Ray (or join ``--address``); print the dashboard URL."""
    import ray

    kwargs = {
        "address": args.address,
        "include_dashboard": not args.no_dashboard,
        "log_to_driver": False,
        "configure_logging": False,
    }
    if not args.no_dashboard:
        kwargs["dashboard_host"] = args.dashboard_host
    if args.address == "local":
        kwargs["num_cpus"] = os.cpu_count()
    else:
        kwargs.pop("include_dashboard")
        probe_address(args.address)
        # One connection attempt of ~15 s instead of 20 retries of ~35 s each (Ray 2.60:
        # ray._private.node._init_gcs_client and the GCS client's cluster-id wait).
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "1")
        os.environ.setdefault("RAY_py_gcs_connect_timeout_s", "10")
    try:
        context = ray.init(**kwargs)
    except (ConnectionError, TimeoutError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot start or reach Ray at {args.address!r}: {first}") from None
    url = getattr(context, "dashboard_url", None)
    if url:
        print(
            f"Ray dashboard: http://{url}  (token: `ray get-auth-token`; "
            "on a cluster: ssh -L 8265:127.0.0.1:8265 HEAD)",
            flush=True,
        )
    return ray


def probe_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse in seconds, with one line, a ``host:port`` ``--address`` where nothing listens
    (ray.init would retry for minutes, printing warnings). ``auto`` and ``ray://`` are left
    to Ray. The address is first rewritten as Ray does (127.0.0.1 -> this node's IP)."""
    import socket

    if address == "auto" or "://" in address:
        return
    try:
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address(address) or address
    except (ImportError, ValueError, OSError):
        target = address
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address must be 'local', 'auto' or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({target}): {reason}") from None


def check_resources(ray, cpus: float, gpus: float) -> None:
    """Fail fast when the cluster lacks what one trial asks for (Tune would wait forever)."""
    have = ray.cluster_resources()
    if gpus > 0 and have.get("GPU", 0) < gpus:
        raise UserError(
            f"--gpus-per-trial {gpus} asked, but the Ray cluster has {have.get('GPU', 0):g} GPUs"
        )
    if have.get("CPU", 0) < cpus:
        raise UserError(
            f"--cpus-per-trial {cpus:g} asked, but the Ray cluster has {have.get('CPU', 0):g} CPUs"
        )


class DefineByRun:
    """Optuna define-by-run space: samples each searched parameter, skipping those that do
    not apply (``mu`` only for ``lagrangian``, ``epsilon`` only for ``accuracy_gap``), and
    returns the constants. It does no computation (and pickles, for Tune's checkpoints)."""

    CONDITIONAL = {"mu": "lagrangian", "epsilon": "accuracy_gap"}

    def __init__(self, space: SearchSpace) -> None:
        self.search = dict(sorted(space.search.items(), key=lambda kv: kv[0] in self.CONDITIONAL))
        self.default_mitigation = space.experiment.finetune.mitigation

    def __call__(self, trial) -> dict:
        constants, chosen = {}, {}
        for name, spec in self.search.items():
            if not isinstance(spec, dict):
                constants[name] = spec
                continue
            needs = self.CONDITIONAL.get(name)
            if needs is not None and chosen.get("mitigation", self.default_mitigation) != needs:
                continue
            log = bool(spec.get("log"))
            if "choices" in spec:
                chosen[name] = trial.suggest_categorical(name, spec["choices"])
            elif spec.get("int"):
                chosen[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=log)
            else:
                chosen[name] = trial.suggest_float(
                    name, float(spec["low"]), float(spec["high"]), log=log
                )
        return constants


def make_searcher(space: SearchSpace, objective: str, run_dir: Path, seed: int, constrained: bool):
    """OptunaSearch with the objectives as lists, a seeded TPE sampler, constraints through
    ``trial.set_constraint`` and a journal file ``RUN/optuna.journal`` (optuna-dashboard can
    open it)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage
    from ray.tune.search.optuna import OptunaSearch

    class SweepOptunaSearch(OptunaSearch):
        """Tags every Optuna trial with its Tune trial id (user attribute
        ``tune_trial_id``, the ``trial_id`` of the Parquet rows) and, for a constrained
        sweep, sets ``constraint_*`` results as Optuna constraints before telling."""

        def suggest(self, trial_id):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if isinstance(config, dict) and ot_trial is not None:
                ot_trial.set_user_attr("tune_trial_id", trial_id)
            return config

        def on_trial_complete(self, trial_id, result=None, error=False):
            ot_trial = self._ot_trials.get(trial_id)
            if constrained and ot_trial is not None and result:
                for key, value in result.items():
                    if key.startswith("constraint_"):
                        ot_trial.set_constraint(key, float(value))
            super().on_trial_complete(trial_id, result, error)

    metric, mode = OBJECTIVES[objective]
    storage = JournalStorage(JournalFileBackend(str(run_dir / "optuna.journal")))
    cls = SweepOptunaSearch
    return cls(
        space=DefineByRun(space),
        metric=metric if len(metric) > 1 else metric[0],
        mode=mode if len(mode) > 1 else mode[0],
        sampler=optuna.samplers.TPESampler(seed=seed),
        storage=storage,
        study_name=run_dir.name,
    )


def fail_orphan_optuna_trials(run_dir: Path) -> int:
    """Tell FAIL to every Optuna trial still RUNNING (left by a killed driver)."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = run_dir / "optuna.journal"
    if not journal.exists():
        return 0
    storage = JournalStorage(JournalFileBackend(str(journal)))
    failed = 0
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            failed += 1
    return failed


def run_sweep(args: argparse.Namespace) -> Path:
    """Validate everything, start Ray, run (or resume) the sweep, summarize. Returns RUN."""
    space = resolve_space(args)
    validate_args(args, space)
    preflight(space, args.objective)
    run_dir, storage = prepare_run_dir(args, space)

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    ray = start_ray(args)
    from ray import tune

    from tune_linfair.trainables import SweepContext, search_trial

    try:
        gpus = args.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        check_resources(ray, args.cpus_per_trial, gpus)
        create_run_dir(args, run_dir, storage)
        write_sweep_record(run_dir, args, space)
        context = SweepContext(
            space_raw=space.raw,
            run_dir=str(run_dir),
            cache_dir=str(storage / "cache"),
            run_id=run_dir.name,
            cpus_per_trial=args.cpus_per_trial,
            max_accuracy_drop=args.max_accuracy_drop,
        )
        trainable = tune.with_resources(
            tune.with_parameters(search_trial, context=context),
            {"cpu": args.cpus_per_trial, "gpu": gpus},
        )
        tune_dir = run_dir / "tune"
        if args.resume and tune.Tuner.can_restore(str(tune_dir)):
            # Optuna trials left RUNNING by the killed driver stay RUNNING here: the
            # restored searcher tells those whose Tune trials it reruns; the rest are told
            # FAIL after the fit (failing them first would refuse the reruns' results).
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_errored=True)
        else:
            tuner = build_tuner(args, space, trainable, run_dir)
        with InterruptWatch() as interrupt:
            tuner.fit()
        if interrupt.seen:
            # Tune stopped with its state saved and reruns the unfinished trials on
            # --resume; their Optuna trials must stay RUNNING until then.
            raise SweepInterrupted(run_dir)
        orphans = fail_orphan_optuna_trials(run_dir)
        if orphans:
            print(f"marked {orphans} orphan Optuna trial(s) FAIL", flush=True)
    finally:
        ray.shutdown()
    summarize(run_dir)
    return run_dir


class InterruptWatch:
    """Notes a Ctrl-C (SIGINT) during ``Tuner.fit``, which Tune does not report: it stops
    gracefully, saves its state and returns as if the sweep were done.

    The SIGINT is passed on to Tune as SIGUSR1, its other stop signal (so the graceful stop
    is kept); before Tune's handler is in place, or on a second Ctrl-C, it raises
    KeyboardInterrupt as usual. Only in the main thread; a no-op elsewhere."""

    def __init__(self) -> None:
        self.seen = False
        self._saved: tuple | None = None

    def __enter__(self) -> InterruptWatch:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours stays in place
            self._saved = (
                env,
                signal.signal(signal.SIGINT, self._on_sigint),
                signal.getsignal(signal.SIGUSR1),
            )
        return self

    def _on_sigint(self, signum, frame) -> None:
        import signal

        first, self.seen = not self.seen, True
        usr1 = signal.getsignal(signal.SIGUSR1)
        tune_listens = callable(usr1) and self._saved is not None and usr1 is not self._saved[2]
        if not (first and tune_listens):
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc) -> None:
        import signal

        if self._saved is not None:
            env, sigint, sigusr1 = self._saved
            signal.signal(signal.SIGINT, sigint)
            signal.signal(signal.SIGUSR1, sigusr1)
            if env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = env


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before its trials finished; ``--resume --run-dir RUN`` goes on."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


def build_tuner(args: argparse.Namespace, space: SearchSpace, trainable, run_dir: Path):
    """The Tuner of a fresh sweep. Workers are reused across trials (``reuse_actors``): a
    fresh worker per trial costs ~5 CPU-s of boot, imports and data loading, and reuse made
    a 4-trial sweep 2.15x faster (bench/RESULTS.md, section 1)."""
    from ray import tune

    max_concurrent = args.max_concurrent or space.max_concurrent
    run_config = tune.RunConfig(
        name="tune",
        storage_path=str(run_dir),
        failure_config=tune.FailureConfig(max_failures=0),
        verbose=1,
    )
    if args.objective == "grid":
        points = [{**p, "point_index": i} for i, p in enumerate(space.grid_points())]
        return tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(points)},
            tune_config=tune.TuneConfig(
                num_samples=1, max_concurrent_trials=max_concurrent, reuse_actors=True
            ),
            run_config=run_config,
        )
    searcher = make_searcher(
        space, args.objective, run_dir, args.seed, constrained=args.max_accuracy_drop is not None
    )
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=args.trials or space.trials,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
        ),
        run_config=run_config,
    )


def summarize(run_dir: Path) -> None:
    """Print the Pareto-optimal trials and where the results are; draw the Pareto plot."""
    trials = results.load_trials(run_dir)
    ok = trials[trials["status"] == "ok"]
    failed = len(trials) - len(ok)
    print(f"\n{len(trials)} trials ({len(ok)} ok, {failed} failed) in {run_dir}")
    if len(ok):
        cols = list(results.SUMMARY_COLUMNS)
        front = ok[ok["pareto"]].sort_values("relu_count")[cols]
        print("Pareto-optimal trials (val accuracy max, val worst-group drop min, ReLUs min):")
        print(front.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        plot = results.plot_pareto(trials, run_dir / "pareto.png")
        print(f"Pareto plot: {plot}")
    for table in ("trials", "groups", "samples"):
        print(f"Parquet {table}: {run_dir / table}")
    print(f"Report: python analysis/report.py {run_dir}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_sweep(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        run = getattr(err, "run_dir", None) or args.run_dir or "RUN"
        print(f"interrupted: continue with --resume --run-dir {run}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
