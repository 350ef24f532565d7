"""Benchmark: what in-trial checkpoints cost the main job.

The main job (``python -m tune_linfair.search --objective pareto``, the default space) runs
``--trials`` configurations x ``--repeats`` seeds, with ``--checkpoint-every EVERY``
(Tune checkpoints of the fine-tuning state every EVERY epochs) against
``--checkpoint-every 0`` (none). Both run in one storage path whose cache a warm-up sweep
filled first, so the trials only fine-tune and evaluate: the part a checkpoint slows down.
The two variants alternate (A B, B A, ...) over ``--pairs`` pairs; each sweep is the real
CLI in a subprocess, timed by the wall clock, and its trials' Tune time (the sum over
trials of their last ``time_total_s`` in ``RUN/tune/*/result.json``) is read back.

On a shared machine the sweeps' wall times swing by tens of percent from run to run, more
than checkpoints cost. ``--inprocess`` measures the cost where it is paid, in CPU time, which
load barely moves: the default space's fine-tuning (its model and data, lagrangian, the
default epochs, on a linearized copy of a briefly trained base model) run in this process
with a checkpointer that does what a Tune checkpoint does on the worker (capture the state,
``torch.save`` it to a temporary folder, copy the folder into the trial's folder, as Tune's
persist does on a local storage path), against no checkpointer, alternating, ``--pairs``
times; ``time.process_time`` of each run. The Tune driver's share (about 5.6 ms of CPU per
report, bench/RESULTS.md section 1) comes on top, once per checkpoint.

Run::

    python bench/checkpoint_overhead.py                  # 3 pairs, 4 trials x 1 seed, every 1
    python bench/checkpoint_overhead.py --quick          # 1 pair, 2 trials
    python bench/checkpoint_overhead.py --inprocess --pairs 5

Prints a table; appends a record to ``bench/results/checkpoint_overhead[-quick].jsonl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import fmt_summary, loadavg, record, summary, table, uptime

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "PYTHONPATH": str(ROOT),
}


def sweep(storage: Path, name: str, every: int, args: argparse.Namespace) -> dict:
    """One CLI sweep into ``storage/name``; its wall time, trial time and checkpoints."""
    run = storage / name
    cmd = [sys.executable, "-m", "tune_linfair.search", "--objective", "pareto"]
    cmd += ["--trials", str(args.trials), "--repeats", str(args.repeats), "--seed", "0"]
    cmd += ["--storage-path", str(storage), "--run-dir", str(run), "--no-dashboard"]
    cmd += ["--checkpoint-every", str(every)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    trial_s, checkpoints = 0.0, 0
    for path in (run / "tune").rglob("result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        trial_s += lines[-1]["time_total_s"]
        checkpoints += sum(1 for r in lines if r.get("checkpoint_dir_name"))
    return {"wall_s": wall, "trial_s": trial_s, "checkpoints": checkpoints}


class CopyingCheckpointer:
    """What a Tune checkpoint costs the worker: save the state to a temporary folder and copy
    it into ``target`` (Tune's persist on a local storage path)."""

    def __init__(self, target: Path, every: int) -> None:
        self.target, self.every, self.saves = target, every, 0
        self.cpu_s: list[float] = []  # CPU time of each save (the state is captured before)

    def restore(self):
        return None

    def save(self, state: dict, epoch: int) -> None:
        from tune_linfair.checkpointing import save_state

        start = time.process_time()
        with tempfile.TemporaryDirectory() as folder:
            save_state(folder, state, epoch)
            shutil.copytree(folder, self.target / f"checkpoint_{self.saves:06d}")
        self.cpu_s.append(time.process_time() - start)
        self.saves += 1


def inprocess(args: argparse.Namespace) -> None:
    """CPU time of the default space's fine-tuning with and without checkpoint saves."""
    import torch

    from tune_linfair.finetune import finetune
    from tune_linfair.linearize import linearize
    from tune_linfair.models import create_model
    from tune_linfair.pretrain import pretrain
    from tune_linfair.spaces import load_space
    from tune_linfair.stages import load_data

    torch.set_num_threads(1)
    exp = load_space("default").experiment
    data = load_data(exp, 0)
    torch.manual_seed(0)
    base = create_model(exp.model.name, data.num_classes, data.input_shape, exp.model.width)
    pretrain(base, data, type(exp.base)(epochs=3), seed=0)
    student = copy.deepcopy(base)
    linearize("random", student, base, data, 0.2, settings=exp.linearize, seed=0)
    settings = type(exp.finetune)(**{**vars(exp.finetune), "mitigation": "lagrangian", "mu": 0.1})
    load_before, uptime_before = loadavg(), uptime()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as tmp:
        for i in range(args.pairs):
            order = ["off", "on"] if i % 2 == 0 else ["on", "off"]
            for label in order:
                target = Path(tmp) / f"{label}{i}"
                target.mkdir()
                ckpt = CopyingCheckpointer(target, args.every) if label == "on" else None
                model = copy.deepcopy(student)
                start = time.process_time()
                finetune(model, base, data, settings, seed=0, checkpoint=ckpt)
                cpu = time.process_time() - start
                size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
                saves = ckpt.cpu_s if ckpt is not None else []
                runs.append(
                    {"pair": i, "variant": label, "cpu_s": cpu, "bytes": size, "save_cpu_s": saves}
                )
                print(json.dumps(runs[-1]), flush=True)
    by = {(r["pair"], r["variant"]): r for r in runs}
    ratio = [by[(i, "on")]["cpu_s"] / by[(i, "off")]["cpu_s"] for i in range(args.pairs)]
    saves = settings.epochs // args.every if args.every else 0
    per_save = [
        (by[(i, "on")]["cpu_s"] - by[(i, "off")]["cpu_s"]) / max(saves, 1)
        for i in range(args.pairs)
    ]
    save_cpu = [v for r in runs for v in r["save_cpu_s"]]
    epoch_cpu = [by[(i, "off")]["cpu_s"] / settings.epochs for i in range(args.pairs)]
    rows = [
        ["CPU per save, timed (ms)", fmt_summary([1000 * v for v in save_cpu], 1)],
        ["CPU per epoch, no checkpoints (ms)", fmt_summary([1000 * v for v in epoch_cpu], 1)],
        [
            "fine-tuning CPU, no checkpoints (s)",
            fmt_summary([by[(i, "off")]["cpu_s"] for i in range(args.pairs)]),
        ],
        [
            f"fine-tuning CPU, every {args.every} (s)",
            fmt_summary([by[(i, "on")]["cpu_s"] for i in range(args.pairs)]),
        ],
        ["CPU ratio on/off", fmt_summary(ratio, 3)],
        ["CPU per checkpoint (ms)", fmt_summary([1000 * v for v in per_save], 1)],
        ["checkpoint size (MB, each)", f"{by[(0, 'on')]['bytes'] / max(saves, 1) / 1e6:.2f}"],
    ]
    print(table(rows, ["measurement", "median (min, max, n)"]))
    print(f"load before: {uptime_before}\nload after:  {uptime()}")
    path = record(
        "checkpoint_overhead_inprocess",
        {
            "args": vars(args),
            "epochs": settings.epochs,
            "runs": runs,
            "cpu_ratio": summary(ratio),
            "cpu_per_checkpoint_s": summary(per_save),
            "save_cpu_s": summary(save_cpu),
            "epoch_cpu_s": summary(epoch_cpu),
            "load_before": load_before,
            "load_after": loadavg(),
        },
        quick=args.quick,
    )
    print(f"recorded in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 pair, 2 trials")
    parser.add_argument("--inprocess", action="store_true", help="CPU time of fine-tuning alone")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.trials = 1, 2
    if args.inprocess:
        sys.path.insert(0, str(ROOT))
        return inprocess(args)
    load_before, uptime_before = loadavg(), uptime()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ckpt_bench_") as tmp:
        storage = Path(tmp) / "runs"
        warm = sweep(storage, "warmup", 0, args)  # trains and caches the base/linearized models
        for i in range(args.pairs):
            order = [("off", 0), ("on", args.every)]
            for label, every in order if i % 2 == 0 else order[::-1]:
                runs.append(
                    {"pair": i, "variant": label, **sweep(storage, f"{label}{i}", every, args)}
                )
                print(json.dumps(runs[-1]), flush=True)
    by = {(r["pair"], r["variant"]): r for r in runs}
    wall_ratio = [by[(i, "on")]["wall_s"] / by[(i, "off")]["wall_s"] for i in range(args.pairs)]
    trial_ratio = [by[(i, "on")]["trial_s"] / by[(i, "off")]["trial_s"] for i in range(args.pairs)]
    rows = [
        [
            "sweep wall, no checkpoints (s)",
            fmt_summary([by[(i, "off")]["wall_s"] for i in range(args.pairs)]),
        ],
        [
            f"sweep wall, every {args.every} (s)",
            fmt_summary([by[(i, "on")]["wall_s"] for i in range(args.pairs)]),
        ],
        ["sweep wall ratio on/off", fmt_summary(wall_ratio, 3)],
        ["trials' Tune time ratio on/off", fmt_summary(trial_ratio, 3)],
        ["checkpoints per sweep", str(by[(0, "on")]["checkpoints"])],
    ]
    print(table(rows, ["measurement", "median (min, max, n)"]))
    print(f"load before: {uptime_before}\nload after:  {uptime()}")
    path = record(
        "checkpoint_overhead",
        {
            "args": vars(args),
            "warmup": warm,
            "runs": runs,
            "wall_ratio": summary(wall_ratio),
            "trial_time_ratio": summary(trial_ratio),
            "load_before": load_before,
            "load_after": loadavg(),
        },
        quick=args.quick,
    )
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
