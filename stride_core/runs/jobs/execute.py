"""The job process itself, `python -m stride_core.runs.jobs exec ...`: ensure the default corpus and the
built-in model when asked, run the command, and record a terminal state if the command did not.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from ..progress import RunStatus, read_status, write_status
from ...store.workspace import Workspace
from .files import LOG_FILE, PRESETS, TERMINAL_STATES, log_tail
from .launch import builtin_model_ready

logger = logging.getLogger(__name__)


def _exec_main(argv: list[str]) -> int:
    """`python -m stride_core.runs.jobs exec ...`: the process a job is (see the module docstring)."""
    p = argparse.ArgumentParser(prog="python -m stride_core.runs.jobs exec")
    p.add_argument("--workspace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--ensure-corpus", default=None)
    p.add_argument("--ensure-model", default=None, choices=list(PRESETS))
    p.add_argument("--device", default="auto", help="device for training the built-in model")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ws = Workspace(args.workspace)
    run_dir = ws.run_dir(args.run)
    print(f"[job] run {args.run}: pid {os.getpid()}, command: {' '.join(cmd)}", flush=True)
    rep = None
    try:
        if args.ensure_corpus or args.ensure_model:
            # Each preparation step is a stage of its own with a fraction (hence an ETA on the Runs page): on a
            # loaded CPU, training the built-in model is the first ten minutes of a first launch.
            from ...store.corpus import list_corpora
            from ..progress import Reporter

            rep = Reporter(run_dir, args.run, min_interval=1.0)
            corpus = args.ensure_corpus or "pydocs"  # the built-in model is trained on the default corpus
            if corpus not in [c["name"] for c in list_corpora(ws)]:
                from ...store.pydocs import build_default_corpus

                rep.stage("build corpus", f"building the default corpus {corpus!r} from this Python's documentation")
                build_default_corpus(ws, name=corpus, on_progress=rep.update)
                print(f"[job] built corpus {corpus!r}", flush=True)
            if args.ensure_model and not builtin_model_ready(ws, args.ensure_model):
                from ..demo import ensure_default_model
                from ...store.models import resolve_device

                rep.stage("train model", f"training the built-in model (preset {args.ensure_model}; minutes on a CPU)")
                ensure_default_model(ws, args.ensure_model, device=resolve_device(args.device), progress=False,
                                     on_progress=rep.update)
                print(f"[job] trained the built-in model ({args.ensure_model} preset)", flush=True)
            rep.update(1.0, "default corpus and model ready")
            rep.flush()
    except Exception as exc:  # noqa: BLE001 - recorded for the dashboard, then exit non-zero
        logger.exception("preparing the default corpus/model failed")
        stage = rep.status.stage if rep and rep.status.stage else "prepare"
        rep_started = rep.status.started_at if rep else time.time()
        write_status(run_dir, RunStatus(run=args.run, state="failed", stage=stage, pid=os.getpid(), started_at=rep_started,
                                        error=f"preparing the default corpus/model failed ({stage}): {type(exc).__name__}: {exc}"))
        return 1
    if not cmd:
        write_status(run_dir, RunStatus(run=args.run, state="failed", error="the job has no command to run"))
        return 2
    sys.stdout.flush()
    try:
        rc = subprocess.call(cmd, cwd=str(ws.root))
    except OSError as exc:
        rc = 127
        print(f"[job] cannot run the command: {exc}", flush=True)
    final = read_status(run_dir)
    if final is None or final.state not in TERMINAL_STATES:
        final = final or RunStatus(run=args.run)
        if rc == 0:
            final.state, final.progress, final.message = "done", 1.0, final.message or "finished"
        else:
            final.state = "failed"
            final.error = f"the command exited with status {rc} without finishing; last lines of {LOG_FILE}:\n{log_tail(run_dir)}"
        write_status(run_dir, final)
    print(f"[job] finished with exit status {rc}, state {final.state}", flush=True)
    return rc


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "exec":
        print("usage: python -m stride_core.runs.jobs exec --workspace W --run RUN [--ensure-corpus NAME] "
              "[--ensure-model PRESET] -- COMMAND...", file=sys.stderr)
        return 2
    return _exec_main(argv[1:])
