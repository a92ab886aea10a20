"""Past one machine: render nodes as Ray actors, and the front that places sessions on them.

`node_actor` (a machine's `server.node.Node` inside a Ray actor), `placement` (which node takes
an offer), `front` (the app's host over the cluster: discovery, heartbeats, failures, figures),
`ray_setup` (joining the cluster). `python -m server.cluster --address ADDR` runs a front.
"""
