"""Several compositions in one jobflow Flow (one CSP sub-flow each), run locally.

    python workflows/batch_formulas.py NaCl MgO KBr --n 10 --relax batched

Every formula is validated before anything runs; each gets its own result document.
"""

from __future__ import annotations

import argparse

from jobflow import run_locally

from dao_flows import dao_csp_batch_flow, get_store
from dao_flows.flows import add_option_arguments, given_options
from dao_flows.queries import get_result


def main() -> None:
    ap = argparse.ArgumentParser(description="DAO CSP for several formulas in one flow")
    ap.add_argument("formulas", nargs="*", default=["NaCl", "MgO", "KBr"])
    add_option_arguments(ap)
    args = ap.parse_args()

    options = given_options(args)
    flow = dao_csp_batch_flow(args.formulas, **options)
    store = get_store()
    run_locally(flow, store=store, log=False)
    for sub in flow.jobs:  # one CSP sub-flow per formula; its uuid is the run uuid
        result = get_result(run_uuid=sub.uuid, store=store)
        if result is None:
            print(f"{sub.name}: no result")
            continue
        best = result.best
        print(
            f"{result.formula}: {result.n_unique} unique / {result.n_candidates}, best "
            f"{best.spacegroup_symbol if best else '-'}, {len(result.failed)} failed"
        )


if __name__ == "__main__":
    main()
