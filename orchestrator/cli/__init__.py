"""The ``ganray`` command line: one group per concern, one error mapping for all.

Every command raises :class:`trainers.errors.GanrayError` (or a subclass) for a failure a
user can act on; :class:`GanrayGroup` prints its message on stderr and exits with its
``exit_code`` (2 for usage and spec errors, 1 for the rest). Anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import click

from trainers.errors import GanrayError


class GanrayGroup(click.Group):
    """A click group that turns a GanrayError of any subcommand into a message and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GanrayError as err:
            click.echo(f"ganray: error: {err}", err=True)
            ctx.exit(err.exit_code)


@click.group(cls=GanrayGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """Train GANs on Ray with data streamed from object storage and runs kept in MLflow.

    Endpoints come from the environment (RAY_ADDRESS, RAY_DASHBOARD_ADDRESS, MLFLOW_TRACKING_URI,
    AWS_*) or from the embedded stack that `ganray local up` starts under $GANRAY_HOME.
    """
    if ctx.invoked_subcommand != "local":
        # Before anything imports Ray: its token loader reads the environment once.
        from orchestrator.cluster.endpoints import use_cluster_environment

        use_cluster_environment()


def _register() -> None:
    from orchestrator.cli import agent, cluster, data, generate, local, models, project, run, serve

    for module in (local, data, run, generate, project, agent, models, serve, cluster):
        for command in module.COMMANDS:
            main.add_command(command)


_register()

if __name__ == "__main__":
    main()
