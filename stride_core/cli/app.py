"""`stride app`: start the audit dashboard (Streamlit) on a workspace.

The app starts at once. In a workspace without a `demo` run (`demo-ci` with --demo-preset ci), it first launches one background job that
builds the default corpus and the built-in model and runs STRIDE on the sample prompts as run `demo`;
the dashboard's Runs page shows its progress. Then this process becomes `streamlit run dashboard/app.py`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

from ..errors import StrideError

logger = logging.getLogger(__name__)


def app_script() -> Path:
    """dashboard/app.py of the installed package (also when an old editable install maps it as a namespace)."""
    import dashboard

    if getattr(dashboard, "__file__", None):
        return Path(dashboard.__file__).resolve().parent / "app.py"
    for d in dashboard.__path__:
        if (Path(d) / "app.py").is_file():
            return Path(d).resolve() / "app.py"
    raise StrideError("cannot find dashboard/app.py: reinstall the package (pip install -e .)")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    """True when `host` only listens on this machine (127.0.0.0/8, ::1, or a name resolving only to them)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        addrs = {a[4][0] for a in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addrs) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs)


def no_auth_warning(host: str, port: int) -> str:
    return (f"warning: --host {host} makes the dashboard reachable from other machines, and it has no "
            f"authentication: anyone who can reach port {port} can read every corpus and result in the workspace and "
            f"start jobs on this machine. Keep the default 127.0.0.1 (and use an SSH tunnel), or put it behind an "
            f"authenticating proxy.")


def streamlit_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(app_script()),
            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal"]


def cmd_app(args) -> None:
    from ..runs import jobs
    from .options import ws_from_args

    ws = ws_from_args(args).ensure()
    if not 1 <= args.port <= 65535:
        raise StrideError(f"--port must be in 1..65535, got {args.port}")
    if not port_free(args.host, args.port):
        raise StrideError(f"port {args.port} on {args.host} is in use (another `stride app`?): pass --port with a free port")
    if not is_loopback(args.host):
        # The dashboard reads every corpus and starts jobs, with no login: say so before exposing it.
        print(no_auth_warning(args.host, args.port), file=sys.stderr, flush=True)
    demo = "demo" if args.demo_preset == "default" else f"demo-{args.demo_preset}"  # the names `stride demo` uses
    if not args.no_demo and not ws.runs_dir.joinpath(demo).exists():
        job = jobs.start_demo_job(ws, preset=args.demo_preset, device=args.device, run=demo)
        print(f"started the demo job (pid {job['pid']}): builds the default corpus + model, then runs STRIDE on the "
              f"sample prompts as run {demo!r}; log: {ws.run_dir(demo) / jobs.LOG_FILE}", flush=True)
    cmd = streamlit_command(args.host, args.port)
    env = dict(os.environ, STRIDE_WORKSPACE=str(ws.root))
    print(f"dashboard: http://{args.host}:{args.port}  (workspace {ws.root}; Ctrl-C stops the dashboard, "
          "not running jobs)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, cmd, env)
    except OSError as exc:
        raise StrideError(f"cannot start Streamlit ({exc}); is streamlit installed in this environment?") from exc


def register(sub, common) -> None:
    x = sub.add_parser("app", parents=[common], help="start the audit dashboard (Streamlit) on the workspace",
                       description="Start the dashboard. In a workspace without a 'demo' run, first start a background "
                                   "job that builds the default corpus + model and runs STRIDE on the sample prompts.")
    x.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    x.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    x.add_argument("--no-demo", action="store_true", help="do not start the demo job in a fresh workspace")
    x.add_argument("--demo-preset", choices=["ci", "default"], default="default",
                   help="preset of the demo job's model and run (default: default)")
    x.add_argument("--device", default="auto", help="device of the demo job: auto, cpu or cuda")
    x.set_defaults(func=cmd_app)
