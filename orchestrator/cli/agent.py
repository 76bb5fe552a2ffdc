"""``ganray agent``: the spot-notice agent of one node."""
from __future__ import annotations

import re

import click

from trainers.errors import UsageError


@click.command("agent")
@click.option("--provider", type=click.Choice(["aws", "gcp", "sigterm"]), required=True,
              help="Where the notice comes from: AWS IMDSv2, the GCE metadata server, or SIGTERM (Kubernetes).")
@click.option("--metadata-url", help="Metadata server base URL (default: the provider's link-local address).")
@click.option("--node-id", help="Hex id of the Ray node to drain (default: the node on this host).")
@click.option("--margin-s", type=float, default=10.0, show_default=True,
              help="Drain deadline = notice end (clamped to now .. the provider's notice) minus this margin.")
@click.option("--poll-s", type=float, default=5.0, show_default=True, help="Seconds between metadata polls.")
@click.option("--grace-s", type=float, default=30.0, show_default=True,
              help="sigterm provider: seconds between SIGTERM and the kill (the pod's grace period).")
@click.option("--address", "gcs_address", help="Ray GCS address host:port (default: RAY_ADDRESS or the local stack).")
def agent_cmd(provider: str, metadata_url: str | None, node_id: str | None, margin_s: float, poll_s: float,
              grace_s: float, gcs_address: str | None) -> None:
    """Watch this node's preemption notice and drain its Ray node (reason PREEMPTION) when it comes.

    A stop time beyond the provider's notice (120 s AWS, 30 s GCE) is clamped to it, one in the past
    means now; a later notice with an earlier deadline drains again.
    """
    import logging

    from orchestrator.agent.notices import (AWS_DEFAULT_URL, GCP_DEFAULT_URL, AwsSpotWatcher, GcpPreemptionWatcher,
                                    NoticeAgent, SigtermWatcher, drain_ray_node, local_node_id)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s ganray-agent %(levelname)s %(message)s")
    from orchestrator.cluster.endpoints import resolve_endpoints

    address = gcs_address or resolve_endpoints().ray_address
    if not address:
        raise UsageError("no Ray address: pass --address HEAD:6379, set RAY_ADDRESS, or start the local stack")
    if node_id is not None and not re.fullmatch(r"[0-9a-f]{56}", node_id):
        raise UsageError(f"--node-id {node_id!r} is not a Ray node id (56 lowercase hex digits, as `ray list nodes` "
                         "shows)")
    if provider == "aws":
        watcher = AwsSpotWatcher(metadata_url or AWS_DEFAULT_URL)
    elif provider == "gcp":
        watcher = GcpPreemptionWatcher(metadata_url or GCP_DEFAULT_URL)
    else:
        watcher = SigtermWatcher(grace_s)
    node = node_id or local_node_id(address)
    logging.getLogger("ganray.agent").info("watching %r for node %r", provider, node)
    NoticeAgent(watcher, lambda deadline, msg: drain_ray_node(address, node, deadline, msg),
                margin_s=margin_s, poll_s=poll_s).run()


COMMANDS = [agent_cmd]
