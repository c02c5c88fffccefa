"""Registry of subcommands defined outside cli.py: each entry is register(subparsers, common_parent)."""

REGISTRATIONS: list = []
# `stride bench ACTION` subcommands besides `lds`: register(bench_subparsers, common_parent), called by
# bench.harness.register. Append from the module that defines the action.
BENCH_REGISTRATIONS: list = []

from .app_cli import register as _register_app  # noqa: E402  `stride app`: the dashboard

REGISTRATIONS.append(_register_app)

from .bench.harness import register as _register_bench  # noqa: E402  `stride bench lds`: the LDS benchmark

REGISTRATIONS.append(_register_bench)

from .audit_cli import register as _register_audit  # noqa: E402  `stride audit contamination|select`

REGISTRATIONS.append(_register_audit)

from .bench.audit_bench import register as _register_audit_bench  # noqa: E402  `stride bench contamination|selection`

BENCH_REGISTRATIONS.append(_register_audit_bench)

from .bench.plot import register as _register_plot_bench  # noqa: E402  `stride bench plot`: LDS vs time PNG

BENCH_REGISTRATIONS.append(_register_plot_bench)

from .bench.counterfactual import register as _register_cf_bench  # noqa: E402  `stride bench counterfactual`

BENCH_REGISTRATIONS.append(_register_cf_bench)

from .bench.scale import register as _register_scale_bench  # noqa: E402  `stride bench scale`

BENCH_REGISTRATIONS.append(_register_scale_bench)

from .bench.speed import register as _register_speed_bench  # noqa: E402  `stride bench measure|recovery`

BENCH_REGISTRATIONS.append(_register_speed_bench)

from .bench.tracing import register as _register_tracing_bench  # noqa: E402  `stride bench tracing`

BENCH_REGISTRATIONS.append(_register_tracing_bench)
