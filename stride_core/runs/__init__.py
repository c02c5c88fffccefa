"""Orchestration: the one-process pipeline (pipeline), the multi-process engine (distributed), run status files
(progress), background jobs (jobs) and the demo. Built on the method and the store; knows nothing of the CLI.
"""
