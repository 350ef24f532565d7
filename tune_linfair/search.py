"""Sweeps: ``python -m tune_linfair.search`` on Ray Tune + Optuna, results in Parquet.

With no argument it runs the embedded default (``search_spaces/default.yaml``: scikit-learn
digits, unbalanced, ``resnet_mini``) on the local CPU in a few minutes::

    python -m tune_linfair.search --objective pareto

Objectives (:data:`tune_linfair.trial.SEARCHES`): ``pareto`` (validation accuracy max,
validation worst-group relative drop min, ReLU count min; Optuna multi-objective TPE),
``accuracy``, ``fairness`` (worst-group drop min) and ``grid`` (the space's grid, no search).
The run directory's layout and checks are :mod:`tune_linfair.rundir`; this module keeps the
command line and the Ray Tune / Optuna wiring.

A sweep runs in phases (:mod:`tune_linfair.phases`), each a Tune experiment under
``RUN/tune/``: base models, linearized models, the search (or grid) trials, and the full
diagnostics of the trials that need them. Every search trial fine-tunes and evaluates one
configuration on one seed and writes one row to ``RUN/trials/``, per-group rows to
``RUN/groups/`` and per-sample rows to ``RUN/samples/``; the phase runs write
``RUN/stages/`` (see :mod:`tune_linfair.results`). Errors a user can cause end with one
line and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import warnings
from pathlib import Path

from tune_linfair import lost, plan, retries, rundir
from tune_linfair.cli import run_program
from tune_linfair.errors import UserError
from tune_linfair.interrupt import InterruptWatch, SweepInterrupted
from tune_linfair.jobs import DIAGNOSE_MODES
from tune_linfair.preflight import preflight, with_effective_data_options
from tune_linfair.rundir import SweepRecord
from tune_linfair.spaces import SearchSpace, apply_overrides, load_space, parse_space
from tune_linfair.summary import summarize
from tune_linfair.trial import SEARCHES

RESUMED_ARGS = ("objective", "trials", "max_concurrent", "max_accuracy_drop", "seed", "diagnose")
"""Options a resumed sweep takes from its record when the command line does not repeat them."""


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
    p.add_argument(
        "--objective",
        choices=sorted(SEARCHES),
        help="what to optimize (default pareto; a resumed sweep keeps its own)",
    )
    p.add_argument("--space", default="default", help="bundled space name or YAML path")
    p.add_argument(
        "--trials", type=int, help="configurations Optuna suggests (default: the space's)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        help="seeds per configuration (default: the space's); Optuna is told the mean",
    )
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
    p.add_argument("--seed", type=int, help="seed of the Optuna sampler (default 0)")
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
        "--diagnose",
        choices=DIAGNOSE_MODES,
        help="which fine-tuned trials get gradients, Hessians and boundary distances after "
        "the search: pareto (the front's configurations, default), all, none",
    )
    p.add_argument(
        "--no-prebuild",
        action="store_true",
        help="skip the base and linearize phases: each trial builds what it needs",
    )
    p.add_argument(
        "--max-accuracy-drop",
        type=float,
        help="Optuna constraint: validation accuracy at most this many points below the base",
    )
    retries.add_options(p)
    plan.add_arguments(p)
    return p


# -- preparation (no Ray) -----------------------------------------------------------------
def resolve(args: argparse.Namespace) -> tuple[argparse.Namespace, SearchSpace, SweepRecord | None]:
    """The sweep to run: ``--space`` with ``--set`` overrides; or, with ``--resume``, the
    space and options the sweep in ``--run-dir`` started with (its record). Returns the
    arguments completed from the record (a new namespace), the space and the record."""
    if not args.resume:
        repeats = [f"repeats={args.repeats}"] if args.repeats is not None else []
        space = load_space(args.space, list(args.set) + repeats + _data_overrides(args))
        return _with_defaults(args), space, None
    if not args.run_dir:
        raise UserError("--resume needs --run-dir: the sweep directory to continue")
    record, raw = rundir.read_record(args.run_dir)
    if args.set or args.repeats is not None:
        drop = f"--set {args.set[0]}" if args.set else "--repeats"
        raise UserError(
            f"--resume continues the sweep with its saved space ({args.run_dir}/space.yaml); "
            f"drop {drop} (start a new --run-dir to change the space)"
        )
    if args.space not in ("default", record.space):
        raise UserError(
            f"--resume continues the sweep with its saved space {record.space!r}; "
            f"drop --space {args.space}"
        )
    # A resumed sweep runs the trials it started with: the same space means the same cache
    # keys, so the base and linearized models are reused. --data-root/--download may still
    # point at moved data.
    overrides = _data_overrides(args)
    space = parse_space(apply_overrides(raw, overrides) if overrides else raw, record.space)
    saved = {k: record.args.get(k) for k in RESUMED_ARGS if getattr(args, k) is None}
    return _with_defaults(args, **saved), space, record


def _with_defaults(args: argparse.Namespace, **saved) -> argparse.Namespace:
    """A copy of ``args`` with the ``saved`` options filled in, then the defaults of what
    neither gives: objective ``pareto``, sampler seed 0, diagnose ``pareto``."""
    values = {**vars(args), **{k: v for k, v in saved.items() if v is not None}}
    for name, default in (("objective", "pareto"), ("seed", 0), ("diagnose", "pareto")):
        if values.get(name) is None:
            values[name] = default
    return argparse.Namespace(**values)


def _data_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    if args.data_root:
        overrides.append(f"data.root={json.dumps(str(Path(args.data_root).resolve()))}")
    if args.download:
        overrides.append("data.download=true")
    return overrides


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
        kwargs["address"] = probe_address(args.address)
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
        if args.address == "local":
            url = dashboard_url(url, args.dashboard_host)
        print(
            f"Ray dashboard: http://{url}  (token: `ray get-auth-token`; "
            "on a cluster: ssh -L 8265:127.0.0.1:8265 HEAD)",
            flush=True,
        )
    return ray


def dashboard_url(reported: str, host: str) -> str:
    """Where a local dashboard listens. Ray reports its node IP for any bind host but
    localhost, also a specific one (127.0.0.2 is reported as the node IP, where nothing
    answers); the port is the one it took (8266 when 8265 is busy)."""
    if host in ("0.0.0.0", "::", "localhost"):
        return reported
    port = reported.rpartition(":")[2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def probe_address(address: str, timeout_s: float = 5.0) -> str:
    """The cluster address to join, refused in seconds with one line where nothing listens
    (ray.init would retry for minutes, printing warnings). ``auto`` is ``RAY_ADDRESS`` or
    the cluster ``ray start`` started on this machine, never another Ray instance that
    happens to run here (ray.init's fallback); ``ray://`` is left to Ray. The address is
    first rewritten as Ray does (127.0.0.1 -> this node's IP)."""
    import socket

    if address == "auto":
        from ray._private.services import find_bootstrap_address

        address = os.environ.get("RAY_ADDRESS") or find_bootstrap_address(None) or ""
        if not address:
            raise UserError(
                "--address auto: no Ray cluster was started with `ray start` on this machine "
                "and RAY_ADDRESS is not set (start one, or use --address local)"
            )
    if "://" in address:
        return address
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
    return address


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


def run_sweep(args: argparse.Namespace) -> Path | None:
    """Validate, start Ray, run (or resume) the sweep, summarize; return RUN (--plan: None)."""
    args, space, record = resolve(args)
    args = retries.settle(args, record.args if record else None)
    validate_args(args, space)
    if plan.requested(args):
        import torch

        plan.print_plan(args, space, cuda=torch.cuda.is_available())
        return None
    unreachable = preflight(space, args.objective)
    space = with_effective_data_options(space)
    run = rundir.locate(args.storage_path, args.run_dir, space.name, args.objective, record)
    run_dir = run.path

    if args.resume and (run.tune / "tuner.pkl").is_file():
        raise UserError(
            f"{run_dir} was started by an older tune_linfair (one Tune experiment, no "
            "phases) and cannot be resumed by this one; start a new --run-dir"
        )

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    ray = start_ray(args)
    from tune_linfair import phases
    from tune_linfair.trainables import SweepContext

    try:
        gpus = args.gpus_per_trial
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        check_resources(ray, args.cpus_per_trial, gpus)
        rundir.create_run_dir(run, args.resume)
        command = "python -m tune_linfair.search " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        rundir.write_sweep_record(run, args.objective, space, vars(args), command)
        context = SweepContext(
            space_raw=space.raw,
            run_dir=str(run_dir),
            cache_dir=str(run.cache),
            run_id=run.run_id,
            cpus_per_trial=args.cpus_per_trial,
            max_accuracy_drop=args.max_accuracy_drop,
            checkpoint_every=args.checkpoint_every,
        )
        with InterruptWatch() as interrupt:
            runner = phases.PhaseRunner(
                context=context,
                run=run,
                resources={"cpu": args.cpus_per_trial, "gpu": gpus},
                max_concurrent=args.max_concurrent or space.max_concurrent,
                max_failures=args.max_failures,
                resume=args.resume,
                interrupted=lambda: interrupt.seen,
            )
            if not args.no_prebuild:
                phases.prebuild(runner, space, args.objective, unreachable)
            if not interrupt.seen:
                grid = phases.search(
                    runner,
                    space,
                    args.objective,
                    trials=args.trials or space.trials,
                    sampler_seed=args.seed,
                    constrained=args.max_accuracy_drop is not None,
                )
            if not interrupt.seen:
                orphans = rundir.fail_orphan_optuna_trials(run_dir)
                if orphans:
                    print(f"marked {orphans} orphan Optuna trial(s) FAIL", flush=True)
                # a trial whose worker died before it wrote its row gets a failed row here
                lost.write_lost_rows(run_dir, lost.tune_trials(grid), space.raw, run.run_id)
                phases.diagnose(runner, args.diagnose)
        if interrupt.seen:
            # Tune stopped with its state saved and reruns the unfinished trials on
            # --resume; their Optuna trials must stay RUNNING until then.
            raise SweepInterrupted(run_dir)
    finally:
        ray.shutdown()
    summarize(run_dir)
    lost.check_complete(run_dir)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_sweep(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except lost.SweepIncomplete as err:
        print(f"incomplete: {err}", file=sys.stderr)
        return lost.INCOMPLETE_EXIT
    except KeyboardInterrupt as err:
        run = getattr(err, "run_dir", None) or args.run_dir or "RUN"
        print(f"interrupted: continue with --resume --run-dir {run}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(run_program(main))
