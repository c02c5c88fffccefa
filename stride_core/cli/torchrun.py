"""Multi-process command line, launched by torchrun (the engine is stride_core.runs.distributed):

    torchrun --nproc_per_node 4 -m stride_core.cli.torchrun index --corpus C --model DIR --run R [index options]
    torchrun --nproc_per_node 4 -m stride_core.cli.torchrun attribute --run R --prompts FILE [attribute options]
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-endpoint HOST:PORT -m stride_core.cli.torchrun run ...

Errors print once (rank 0) as `error: ...` with exit status 2, as `stride` does.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..errors import StrideError


def build_parser() -> argparse.ArgumentParser:
    from .options import add_attribute_args, add_index_args

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default=None, help="workspace folder (default: $STRIDE_WORKSPACE or ./workspace)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    common.add_argument("--backend", default="auto", choices=["auto", "gloo", "nccl"], help="torch.distributed backend (auto: nccl on CUDA, else gloo)")
    common.add_argument("--query-batch", dest="query_batch", type=int, default=64, help="queries recovered at once per process (memory bound)")
    p = argparse.ArgumentParser(prog="torchrun ... -m stride_core.cli.torchrun",
                                description="STRIDE index / attribute on several processes (launch with torchrun).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    x = sub.add_parser("index", help="stride index, sharded over the processes", parents=[common])
    add_index_args(x)
    x = sub.add_parser("attribute", help="stride attribute, prompts sharded over the processes", parents=[common])
    x.add_argument("--run", required=True)
    add_attribute_args(x)
    x = sub.add_parser("run", help="index + attribute", parents=[common])
    add_index_args(x)
    add_attribute_args(x, with_device=False)
    return p


def main(argv: list[str] | None = None) -> int:
    from ..runs.distributed import attribute, index
    from ..runs.process_group import DistArgs, setup, teardown
    from .options import attribute_args_from, config_from_args, print_top, prompts_from_args, ws_from_args

    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=(logging.DEBUG if args.verbose else logging.INFO) if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock", "transformers", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    comm = None
    try:
        dargs = DistArgs(backend=args.backend, query_batch=args.query_batch)
        comm, dev = setup(dargs, args.device)
        ws = ws_from_args(args)
        progress = not args.no_progress
        if args.command in ("index", "run"):
            rdir = index(ws, args.run, config_from_args(args), comm, dev, overwrite=args.overwrite, progress=progress)
            if comm.is_main and args.command == "index":
                print(f"indexed run {args.run!r} in {rdir} with {comm.world} processes")
        if args.command in ("attribute", "run"):
            attr = attribute_args_from(args)
            attr.device = dev
            df = attribute(ws, args.run, prompts_from_args(args), comm, attr, out=args.out, progress=progress, dargs=dargs)
            if df is not None:
                print_top(df, 5 if args.command == "attribute" else 3)
                print(f"\n{df['query_id'].nunique()} prompts, {len(df)} ranked rows" + (f" written to {args.out}" if args.out else ""))
    except StrideError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        if comm is not None and getattr(exc, "stride_agreed", False):
            comm.barrier()  # every rank failed together: let rank 0 print before torchrun stops the others
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(f"error (rank {rank}): unexpected {type(exc).__name__}: {exc} (re-run with -v for a traceback)", file=sys.stderr)
        if comm is not None and getattr(exc, "stride_agreed", False):
            comm.barrier()
        return 1
    finally:
        if comm is not None:
            teardown(comm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
