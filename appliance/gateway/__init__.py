"""The WebSocket gateway: `herald serve`'s Trio server and its background jobs.

The server takes its listeners, accepts connections (plain or TLS), routes their requests to
the engine (reads inline, writes through the one writer, many operations to one commit), fans
committed changes out to whoever is online, ends revoked sessions, and runs the key refresh,
the background re-encrypt and the daily certificate check.

It may import `appliance.protocol`, `appliance.keys`, the shared modules at `appliance/`'s top
and the names `engine` exports; never `appliance.cli`, `appliance.escrow`, `appliance.client`
or `appliance.chat`. `appliance.cli` (which builds it), `appliance.admin` (which shares its
writer, login gate, tokens and metrics) and tests import it.
"""
