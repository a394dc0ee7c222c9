"""Dedicated endpoints on a Ray cluster (``MODELPORT_RAY_ADDRESS``).

- ``replica.py``: what each replica's Ray actor runs on a node: the engine, its model fetched from the
  blob store into the node's own cache, and the engine protocol on a TCP port with a token.
- ``agent.py``: the one process of an API server that is a Ray driver (``python -m modelport.raycluster.agent``); the
  server asks it, over a Unix socket, to start, list, inspect and stop actors.
- ``client.py``: the server's side of that socket, with deadlines: a Ray head that does not answer
  becomes an error the supervisor reports, never a server that hangs or exits.

The API server itself never imports ``ray``: a Ray driver whose head node goes away ends its own
process after a while, and the API must keep answering everything else when that happens.
"""
