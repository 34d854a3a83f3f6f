"""Submit a CSP workflow to a jobflow-remote project: a MongoDB queue, a runner daemon, and
workers on this machine or on clusters (SSH; shell, SLURM, PBS, ...). docs/mongodb.md has a
project file; jobflow-remote is optional (`pip install "dao-csp[remote]"`).

    python workflows/jobflow_remote_submit.py NaCl --worker local --n 10 --n-random 5
    jf runner start          # the daemon: hands READY jobs to the worker, stores their outputs
    jf flow list             # until the flow is COMPLETED; `jf job list` per job
    dao query NaCl           # with a jobflow config whose JOB_STORE is the project's jobstore

Jobs run under `jf execution run` on the worker, which needs dao-csp installed; every output
goes to the project's `jobstore`.
"""

from __future__ import annotations

import argparse

from dao_flows import dao_csp_flow
from dao_flows.flows import add_option_arguments, given_options


def main() -> None:
    ap = argparse.ArgumentParser(description="DAO CSP through jobflow-remote")
    ap.add_argument("formula", nargs="?", default="CsV3Sb5")
    ap.add_argument("--worker", help="worker name in the project (default: its first)")
    ap.add_argument("--project", help="jobflow-remote project (default: the current one)")
    add_option_arguments(ap, relax="per-candidate")  # one job per relaxation: spreads over workers
    ap.add_argument("--device", choices=["cpu", "cuda"])
    args = ap.parse_args()

    from jobflow_remote import submit_flow  # optional dependency

    options = given_options(args)
    flow = dao_csp_flow(args.formula, **options)
    ids = submit_flow(flow, worker=args.worker, project=args.project)
    print(f"submitted run {flow.uuid}: {len(ids)} jobs, db ids {ids[0]}-{ids[-1]}")
    print("start the runner with `jf runner start`; follow it with `jf flow list`")


if __name__ == "__main__":
    main()
