"""Herald's appliance: everything around the engine that makes it a server, laid out by role
(docs/architecture.md draws the parts and their arrows):

- `gateway/`: the WebSocket gateway (`herald serve`'s server) and its background jobs.
- `cli/`: the `herald` command: argparse wiring, the subcommands, and `serve.py`, the one
  place that builds a running server.
- `keys/`: the master key, the double-wrapped DEKs and the escrow backends.
- `escrow/`: Herald's own escrow service, run by a third party (`herald escrow ...`), and the
  appliance's client of it.
- `client/`: the Trio client library; `chat/`: `herald chat`, a terminal client of the gateway.
- `protocol/`: the wire protocol, sans-IO.

The modules at this level (`config`, `terminal`, `cert_expiry`, `lock_file`) are shared by
several parts and import nothing of ours: any part may use them. The arrows are pinned by
tests/test_layers.py.
"""
