"""`stride bench ACTION`: every benchmark command, registered with the CLI through the entry point
`stride_core.commands` (pyproject.toml; read by stride_core.cli.registry)."""

from __future__ import annotations


def register(subparsers, common_parent):
    from . import audit_bench, cost, counterfactual, decoding, harness, plot, scale, speed, tracing

    bench_subparsers = harness.register(subparsers, common_parent)  # `stride bench` itself and `bench lds`
    for module in (audit_bench, cost, plot, counterfactual, decoding, scale, speed, tracing):
        module.register(bench_subparsers, common_parent)
