"""The API server's one Ray driver, in a process of its own (``python -m modelport.raycluster.agent``).

The server starts it (``client.py``) and asks it, one request per connection over a Unix socket in
msgpack frames (as the engine protocol), to do what only a Ray driver can::

    {"op": "nodes"}                        → {"nodes": [{"id", "ip", "resources"}]}   the live nodes
    {"op": "launch", "name", "spec", "token", "store", "resources"}   → {}         a detached actor
    {"op": "status", "names": [...]}       → {"status": {name: {...}}}             each actor's state
    {"op": "list", "prefix"}               → {"names": [...]}                      live named actors
    {"op": "kill", "name"}                 → {}

Actors are *detached* and *named* (in ``MODELPORT_RAY_NAMESPACE``): they outlive this process and the
server, so a restarted server, or another server that takes over supervision, finds the replicas that
are running instead of starting them again, and every server can route to them. Ray never restarts a
replica itself (``max_restarts=0``): a replica lost with its node is seen lost here, and the supervisor
starts another, which Ray places on a node that is alive, with the same crash budget and events as a
replica process that dies on the local backend.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socketserver
import sys
import time
from pathlib import Path
from typing import Any

from modelport.serving.host import watch_parent
from modelport.serving.ipc import pack, read_frame_blocking

log = logging.getLogger(__name__)

STATUS_WAIT_S = 2.0  # an actor that does not answer its status this long is still being placed or started


class Agent:
    def __init__(self, address: str, namespace: str) -> None:
        import ray

        from modelport.raycluster.replica import ReplicaHost

        self.ray = ray
        ray.init(address=address, namespace=namespace, logging_level=logging.WARNING, log_to_driver=False)
        # A replica answers its status while its model loads (a second thread of the actor).
        self.actor = ray.remote(max_concurrency=4)(ReplicaHost)

    def handle(self, message: dict[str, Any]) -> dict[str, Any]:
        op = message.get("op")
        if op == "nodes":
            return {"nodes": self.nodes()}
        if op == "launch":
            self.launch(message)
            return {}
        if op == "status":
            return {"status": self.status(list(message["names"]))}
        if op == "list":
            prefix = str(message.get("prefix", ""))
            return {"names": sorted(n for n in self.ray.util.list_named_actors() if n.startswith(prefix))}
        if op == "kill":
            self.kill(str(message["name"]))
            return {}
        return {"error": f"unknown operation {op!r}"}

    def nodes(self) -> list[dict[str, Any]]:
        return [
            {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "resources": n.get("Resources", {})}
            for n in self.ray.nodes()
            if n.get("Alive")
        ]

    def launch(self, m: dict[str, Any]) -> None:
        r = m["resources"]
        sized = {"memory": int(r["memory"])} if r.get("memory") else {}
        self.actor.options(
            name=m["name"],
            lifetime="detached",
            max_restarts=0,
            num_cpus=r.get("num_cpus", 1),
            num_gpus=r.get("num_gpus", 0),
            # Replicas of a deployment on as many nodes as can hold them: a node lost takes fewer with it.
            scheduling_strategy="SPREAD",
            **sized,
        ).remote(m["spec"], m["token"], m["store"])

    def status(self, names: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        asked: dict[Any, str] = {}
        for name in names:
            try:
                asked[self.ray.get_actor(name).status.remote()] = name
            except ValueError:
                out[name] = {"state": "gone", "error": "the replica's actor no longer exists"}
        ready = self.ray.wait(list(asked), num_returns=len(asked), timeout=STATUS_WAIT_S)[0] if asked else []
        for ref in ready:
            try:
                out[asked[ref]] = self.ray.get(ref)
            except Exception as e:  # RayActorError: its process or node died
                out[asked[ref]] = {"state": "lost", "error": _first_line(e)}
        for name in asked.values():
            out.setdefault(name, {"state": "pending"})  # placed on no node yet, or still starting its process
        return out

    def kill(self, name: str) -> None:
        with contextlib.suppress(ValueError):  # already gone
            self.ray.kill(self.ray.get_actor(name), no_restart=True)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def serve(agent: Agent, path: Path) -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(60)
            try:
                message = read_frame_blocking(self.request)
                answer = agent.handle(message)
            except Exception as e:
                log.exception("ray agent request failed")
                answer = {"error": _first_line(e)}
            self.request.sendall(pack(answer))

    path.unlink(missing_ok=True)
    umask = os.umask(0o177)  # only this user's processes (the server) ever connect
    try:
        server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
    finally:
        os.umask(umask)
    server.daemon_threads = True
    print(f"ray agent ready on {path}", flush=True)
    server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modelport.raycluster.agent", description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="the Ray cluster: auto, HOST:PORT or ray://HOST:10001")
    parser.add_argument("--namespace", default="modelport")
    parser.add_argument("--socket", required=True, type=Path, help="where the server connects")
    parser.add_argument("--parent", type=int, default=0, help="exit when this process (the server) is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.parent:
        watch_parent(args.parent)
    started = time.monotonic()
    try:
        agent = Agent(args.address, args.namespace)
    except Exception as e:  # the server reads this last line as the reason
        print(f"could not connect to the Ray cluster at {args.address}: {_first_line(e)}", file=sys.stderr)
        sys.exit(3)
    log.warning("connected to the Ray cluster at %s in %.1f s", args.address, time.monotonic() - started)
    serve(agent, args.socket)


if __name__ == "__main__":
    main()
