"""FireWorks on the MongoDB wire server: a LaunchPad from `my_launchpad.yaml` (a URI, with
credentials), `dao submit --launchpad` and the `rlaunch` executable running the CSP workflow,
results in the jobflow store on the same server, and the password in no document or output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_mongodb as wire
from monty.serialization import dumpfn

BIN = Path(sys.executable).parent
# Re-ranking off: this test is about the wire server (the re-ranking job: test_fireworks).
SMALL = "--relax per-candidate --n 1 --n-random 2 --n-template 1 --steps 20 --formula-units 2 \
--relax-steps 20 --fmax 0.1 --seed 3 --device cpu --refine-top 0".split()


@pytest.mark.skipif(
    not wire.MONGOECO.is_file(), reason="no mongoeco venv (scripts/mongo_test_server.sh makes it)"
)
@pytest.mark.skipif(not (BIN / "rlaunch").exists(), reason=f"no rlaunch next to {sys.executable}")
def test_launchpad_on_the_wire_server_runs_the_csp_workflow(dao_env, tmp_path, monkeypatch):
    import pymongo
    from fireworks import LaunchPad

    from dao_flows.fireworks import workflow_states
    from dao_flows.queries import get_result

    password = "fw-s3cr3t-Pa55"
    with wire.own_server(tmp_path / "db.sqlite", f"dao:{password}") as uri:
        host = uri.split("//", 1)[1]  # see test_mongodb: mongoeco needs the mechanism named
        auth_uri = f"mongodb://dao:{password}@{host}&authSource=admin&authMechanism=SCRAM-SHA-256"
        wire.use_jobflow_config(tmp_path / "jobflow.yaml", auth_uri, "dao", monkeypatch)
        lp_file = tmp_path / "my_launchpad.yaml"
        dumpfn({"host": auth_uri, "uri_mode": True, "name": "dao_fireworks"}, str(lp_file))
        LaunchPad.from_file(str(lp_file)).reset("", require_password=False)  # `lpad reset`

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        dao = [sys.executable, "-m", "dao_flows.cli", "submit", "NaCl", "--launchpad", str(lp_file)]
        run = dict(env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        submit = subprocess.run([*dao, *SMALL], **run)
        assert submit.returncode == 0, submit.stdout + submit.stderr
        assert f"rlaunch -l {lp_file} rapidfire" in submit.stdout
        rlaunch = subprocess.run([str(BIN / "rlaunch"), "-l", str(lp_file), "rapidfire"], **run)
        assert rlaunch.returncode == 0, rlaunch.stdout[-3000:] + rlaunch.stderr[-3000:]

        lp = LaunchPad.from_file(str(lp_file))
        ids = lp.get_fw_ids()
        assert len(ids) == 1 + 4 + 1  # generation, a relaxation per candidate, ranking
        assert set(workflow_states(lp, ids).values()) == {"COMPLETED"}
        result = get_result("NaCl")  # read back through the jobflow config
        assert result.n_candidates == 4 and result.relax_mode == "per-candidate"
        client = pymongo.MongoClient(auth_uri)
        stored = {f"{name}.{coll}": [str(doc) for doc in client[name][coll].find()]
                  for name in client.list_database_names()
                  for coll in client[name].list_collection_names()}  # fmt: skip
        counts = {key: len(docs) for key, docs in stored.items()}
        print(f"\nFireWorks over the wire: {counts}")
        assert counts["dao_fireworks.fireworks"] == 6 and counts["dao.outputs"] == 6
        assert not any(password in doc for docs in stored.values() for doc in docs)
        for text in (submit.stdout, submit.stderr, rlaunch.stdout, rlaunch.stderr):
            assert password not in text
