"""Submit a CSP workflow to FireWorks and run it with rapidfire in this process.

    python workflows/fireworks_submit.py NaCl --n 10 --n-random 5
    python workflows/fireworks_submit.py NaCl --launchpad workflows/config/my_launchpad.yaml

Without --launchpad the embedded LaunchPad (mongomock-persistence file next to the DAO store)
is used; with --no-launch the workflow is only submitted, and

    export MONGOMOCK_SERVERSTORE_FILE=<printed path>; rlaunch rapidfire

runs it from a shell. Every job writes to the DAO store, so `dao query NaCl` shows the result.
"""

from __future__ import annotations

import argparse

from dao_flows import dao_csp_flow
from dao_flows.fireworks import close_launchpad, launch, submit_flow, workflow_states
from dao_flows.flows import add_option_arguments, given_options
from dao_flows.queries import get_result


def main() -> None:
    ap = argparse.ArgumentParser(description="DAO CSP through FireWorks")
    ap.add_argument("formula", nargs="?", default="CsV3Sb5")
    add_option_arguments(ap, relax="per-candidate")  # one job per relaxation: spreads over workers
    ap.add_argument("--launchpad", default=None, help="my_launchpad.yaml (default: embedded)")
    ap.add_argument("--launch-dir", default=None, help="where rapidfire creates launcher dirs")
    ap.add_argument("--no-launch", action="store_true", help="submit only")
    args = ap.parse_args()

    options = given_options(args)
    flow = dao_csp_flow(args.formula, **options)
    info = submit_flow(flow, launchpad_file=args.launchpad)
    lp = info["launchpad"]
    print(f"submitted {info['n_fireworks']} fireworks: {info['fw_ids']}")
    if args.no_launch:
        close_launchpad(lp)
        if info["embedded_file"]:
            print(f"export MONGOMOCK_SERVERSTORE_FILE={info['embedded_file']}; rlaunch rapidfire")
        return
    launch(lp, launch_dir=args.launch_dir)
    states = workflow_states(lp, info["fw_ids"])
    close_launchpad(lp)
    print("states:", {k: v for k, v in sorted(states.items())})
    result = get_result(run_uuid=flow.uuid)
    if result is None:
        raise SystemExit("no result in the store")
    best = result.best
    print(
        f"{result.formula}: {result.n_unique} unique, {len(result.failed)} failed; best "
        f"{best.spacegroup_symbol if best else '-'} ({best.candidate_id if best else '-'})"
    )


if __name__ == "__main__":
    main()
