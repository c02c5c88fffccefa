"""A small populated workspace for dashboard tests: a tiny corpus and hand-written run folders that follow
the engine's file contract (args.json, provenance.json, status.json, attributions.parquet, ...)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from stride_core.store.corpus import ImportOptions, import_corpus
from stride_core.runs.progress import RunStatus, write_status
from stride_core.store.workspace import Workspace

TOPICS = ["json", "logging", "re", "subprocess", "pathlib", "csv"]
PROMPTS = {
    "q00": ("To serialize a Python dictionary as a JSON string, you can call", " json.dumps(obj) which returns a str"),
    "q01": ("The logging module lets an application record messages at", " different levels such as DEBUG and INFO"),
    "q02": ("A regular expression pattern can be compiled once and then used to", " match many strings <b>fast</b>"),
}


def make_corpus(ws: Workspace, tmp: Path, name: str = "tiny", n: int = 30) -> None:
    src = tmp / f"{name}.jsonl"
    with open(src, "w") as fh:
        for i in range(n):
            topic = TOPICS[i % len(TOPICS)]
            text = (f"Document {i} about the {topic} module. json.dumps(obj) returns a str; the logging module "
                    f"records messages at different levels. <script>alert('x')</script> & more text {i}.")
            fh.write(json.dumps({"text": text, "source": topic, "object": f"{topic}.thing{i}"}) + "\n")
    import_corpus(ws, src, name, ImportOptions(shard_size=10))


def attributions_frame(n_docs: int = 30, k: int = 5) -> pd.DataFrame:
    rows = []
    for qi, (qid, (prompt, cont)) in enumerate(PROMPTS.items()):
        for direction, sign in (("helpful", 1.0), ("harmful", -1.0)):
            for rank in range(1, k + 1):
                # doc 0 recurs (helpful) for every query; the rest differ per query.
                doc = 0 if (direction == "helpful" and rank == 1) else (qi * 7 + rank * 3 + (0 if sign > 0 else 1)) % n_docs
                topic = TOPICS[doc % len(TOPICS)]
                rows.append(dict(query_id=qid, prompt=prompt, continuation=cont, rank=rank, doc_id=doc,
                                 score=sign * (0.5 / rank + 0.01 * qi), direction=direction, query_loss=3.25 + qi,
                                 snippet=f"Document {doc} about the {topic} module.", source=topic,
                                 object=f"{topic}.thing{doc}"))
    return pd.DataFrame(rows)


def make_run(ws: Workspace, run: str, state: str, *, attributions: bool = False, audits: bool = False,
             pid: int | None = None, error: str | None = None, corpus: str = "tiny") -> Path:
    d = ws.run_dir(run)
    d.mkdir(parents=True, exist_ok=True)
    # The engine's layout: {"run", "index": {corpus, model, shards, cache, subsets, operators}}.
    (d / "args.json").write_text(json.dumps({"run": run, "index": {
        "corpus": corpus, "model": "/models/tiny", "shards": None, "cache": {"max_tokens": 64},
        "subsets": {"K": 8, "S": 2}, "operators": {"R": 4, "steps": 10}}}))
    (d / "provenance.json").write_text(json.dumps({"version": "0.1.0", "git_sha": "abc123", "device": "cpu",
                                                   "time": "2026-11-24T00:00:00"}))
    now = time.time()
    st = RunStatus(run=run, state=state, stage="attribute" if state != "done" else "done",
                   progress=0.4 if state == "running" else (1.0 if state == "done" else 0.2),
                   message="measuring subsets", metrics={"fidelity": 2.31, "stability": 0.05} if state == "running" else {},
                   started_at=now - 120, stage_started_at=now - 30, error=error, pid=pid)
    write_status(d, st)
    if attributions:
        attributions_frame().to_parquet(d / "attributions.parquet", index=False)
    if audits:
        pd.DataFrame([
            dict(item_id="q00", doc_id=0, overlap_score=0.8, influence_score=0.5, combined_score=0.9,
                 evidence="json.dumps(obj) returns a <str>", leaked=True),
            dict(item_id="q01", doc_id=4, overlap_score=0.1, influence_score=0.05, combined_score=0.1,
                 evidence="logging", leaked=False),
        ]).to_parquet(d / "contamination.parquet", index=False)
        pd.DataFrame([dict(doc_id=i, score=(i - 15) / 10, decision="keep" if i >= 10 else "drop") for i in range(30)]
                     ).to_parquet(d / "selection.parquet", index=False)
    return d


def sleeper() -> subprocess.Popen:
    """A harmless long-lived process in its own session, standing in for a running job."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)


def populate(root: Path) -> tuple[Workspace, subprocess.Popen]:
    ws = Workspace(root).ensure()
    make_corpus(ws, root.parent)
    make_run(ws, "r-done", "done", attributions=True, audits=True)
    make_run(ws, "r-failed", "failed", error="CUDA out of memory: use --device cpu or the ci preset")
    proc = sleeper()
    make_run(ws, "r-running", "running", pid=proc.pid)
    # Looks running but its process is gone: must show as failed with the log tail.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = make_run(ws, "r-dead", "running", pid=gone.pid)
    (dead / "job.log").write_text("step 1\nTraceback (most recent call last):\nMemoryError: killed\n")
    return ws, proc


# A stand-in for `stride run`: reports a stage through status.json like the engine does, then behaves per MODE.
FAKE_ENGINE = r"""
import os, sys, time
from pathlib import Path
from stride_core.runs.progress import Reporter
run_dir, mode = Path(sys.argv[1]), sys.argv[2]
rep = Reporter(run_dir, run=run_dir.name, min_interval=0)
rep.stage("attribute", "fake engine")
rep.update(0.5, fidelity=1.25)
print("fake engine working", flush=True)
if mode == "done":
    rep.finish("done")
elif mode == "sleep":
    time.sleep(60)
elif mode == "crash":
    print("boom: something broke", flush=True)
    sys.exit(3)
"""


def fake_command(mode: str):
    def run_command(ws, run, corpus, model, prompts_file, preset, device="auto", shards=None, extra_args=None):
        return [sys.executable, "-c", FAKE_ENGINE, str(ws.run_dir(run)), mode]

    return run_command
