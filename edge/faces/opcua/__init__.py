"""The OPC UA face (docs/opcua.md): an asyncua server with a ``VisionSystem`` object after OPC 40100-1,
started only when ``[opcua] enabled = true`` (asyncua is the optional extra ``opcua``).

- server: the server thread, the values it is told, the command writes and the Trigger method;
- nodes: the address space;
- users: the users file (PBKDF2 hashes) and the command that prints a line of it.

May import: edge.util, edge.config, edge.results, and asyncua (through edge.util.deps.require); never another
face, edge.scoring or edge.stores. The daemon's side (the command paths it calls) is edge.service.opcua_face.
"""
