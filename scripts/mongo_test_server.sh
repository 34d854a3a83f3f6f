#!/usr/bin/env bash
# A local MongoDB wire-protocol server for the tests (mongoeco on SQLite; no mongod exists in
# any registry). It needs Python >= 3.13 (the image has it under pyenv) in its own venv.
#   eval "$(bash scripts/mongo_test_server.sh start)"   # prints: export DAO_TEST_MONGODB_URI=...
#   bash scripts/mongo_test_server.sh stop
# Without Python 3.13 (or if the server cannot start) it prints nothing and the MongoDB tests
# skip, saying why; against a real MongoDB, set DAO_TEST_MONGODB_URI yourself instead.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.mongoeco-venv
STATE=.mongoeco
case ${1:-start} in
start)
    PY=$(ls "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.1[3-9]*/bin/python3 2>/dev/null | head -1)
    PY=${PY:-$(command -v python3.13 || true)}
    if [ -z "$PY" ]; then echo "no Python >= 3.13 for mongoeco; MongoDB tests will skip" >&2; exit 0; fi
    if [ ! -x $VENV/bin/python ]; then
        { "$PY" -m venv $VENV && $VENV/bin/pip install -q "mongoeco[wire]>=4.11"; } >&2 ||
            { echo "could not install mongoeco; MongoDB tests will skip" >&2; exit 0; }
    fi
    mkdir -p $STATE
    port=$($VENV/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    nohup $VENV/bin/python scripts/mongo_test_server.py --port "$port" --db $STATE/db.sqlite \
        > $STATE/server.log 2>&1 &
    echo $! > $STATE/pid
    for _ in $(seq 60); do
        uri=$(sed -n 's/^ready //p' $STATE/server.log)
        if [ -n "$uri" ]; then echo "export DAO_TEST_MONGODB_URI='$uri'"; exit 0; fi
        sleep 0.5
    done
    echo "mongoeco did not start (see $STATE/server.log); MongoDB tests will skip" >&2
    ;;
stop)
    [ -f $STATE/pid ] && kill "$(cat $STATE/pid)" 2>/dev/null
    rm -f $STATE/pid
    ;;
esac
exit 0
