"""The admin API: `herald serve`'s second server, for administrators, on a Unix socket.

`admin.sock` in the data directory (mode 0600; a peer of another uid than the server's, or
root's, is refused from its SO_PEERCRED credentials), speaking JSON lines of the frames in
`appliance.protocol.admin_frames`. Administrators log in with their own accounts (the
engine's `admins`), and every op is authorized by role (`roles.py`) on the server's side.
Writes go through the gateway's one writer, so the running server stays the only writer of its
store.

It may import `appliance.protocol`, `appliance.gateway` (its writer, login gate, tokens and
metrics: the parts it shares with the gateway), the shared modules at `appliance/`'s top and
the names `engine` exports. Only `appliance.cli` (which builds it and holds its clients) and
tests import it.
"""
