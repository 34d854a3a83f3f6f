"""Crystal-structure prediction for one formula, run in this process with jobflow.

    python workflows/local_csp.py CsV3Sb5 --n 20 --n-random 10

Results go to the DAO store (embedded MontyDB in ~/.local/share/dao/store unless $DAO_STORE_DIR
or a jobflow config says otherwise) and can be read back with `dao query CsV3Sb5`.
Checkpoints default to the bundled dao-g-base / dao-p-base ($DAO_G_MODEL / $DAO_P_MODEL or
--model / --guidance override them).
"""

from __future__ import annotations

import argparse

from jobflow import run_locally

from dao_flows import dao_csp_flow, get_store
from dao_flows.flows import add_option_arguments, given_options
from dao_flows.queries import get_result


def main() -> None:
    ap = argparse.ArgumentParser(description="DAO CSP with jobflow's run_locally")
    ap.add_argument("formula", nargs="?", default="CsV3Sb5")
    add_option_arguments(ap)
    ap.add_argument("--model", default=None, help="DAO-G checkpoint (name or path)")
    ap.add_argument("--guidance", help="DAO-P checkpoint, or 'none'")
    args = ap.parse_args()

    options = given_options(args)
    flow = dao_csp_flow(args.formula, **options)
    store = get_store()
    run_locally(flow, store=store, log=False)

    result = get_result(run_uuid=flow.uuid, store=store)
    if result is None:
        raise SystemExit("the flow produced no result; see the log above")
    print(
        f"{result.formula}: {result.n_unique} unique of {result.n_candidates} candidates "
        f"(run {result.run_uuid})"
    )
    print(f"{'rank':>4} {'space group':<12} {'E-Emin meV/at':>14} {'source':<7} candidate")
    for p in result.polymorphs:
        print(
            f"{p.rank:>4} {p.spacegroup_symbol:<12} {p.e_above_min_meV:>14.1f} "
            f"{p.source:<7} {p.candidate_id}"
        )
    for f in result.failed:
        print(f"failed {f.candidate_id} ({f.stage}): {f.reason}")


if __name__ == "__main__":
    main()
