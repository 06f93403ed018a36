"""`herald chat`: a small interactive client of the gateway, for a terminal or piped input.

A client like any other: it may import `appliance.client`, `appliance.protocol` and the
shared `appliance.terminal`, never the engine or the server's parts. Only `appliance.cli`
(and tests) import it.
"""
