"""A MongoDB wire-protocol server for tests (mongoeco, SQLite-backed, so data survive a restart).

    python3.13 scripts/mongo_test_server.py --port 27117 --db /tmp/dao-mongo.sqlite

Needs Python >= 3.13 with ``mongoeco[wire]`` (``scripts/mongo_test_server.sh`` makes that
environment). Prints ``ready mongodb://host:port`` once it accepts connections and serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal


async def serve(host: str, port: int, db: str, credentials: str | None) -> None:
    from mongoeco.engines.sqlite import SQLiteEngine
    from mongoeco.wire import AsyncMongoEcoProxyServer, WireAuthUser

    users = ()
    if credentials:  # "user:password": clients must authenticate (SCRAM) as that user
        name, _, password = credentials.partition(":")
        users = (WireAuthUser(name, password),)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = AsyncMongoEcoProxyServer(
        engine=SQLiteEngine(db), host=host, port=port, auth_users=users
    )
    await server.start()
    print(f"ready {server.address.uri}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", required=True, help="SQLite file holding the databases")
    parser.add_argument(
        "--auth-env", help="environment variable holding user:password (kept off the command line)"
    )
    args = parser.parse_args()
    credentials = os.environ.get(args.auth_env) if args.auth_env else None
    asyncio.run(serve(args.host, args.port, args.db, credentials))


if __name__ == "__main__":
    main()
