"""Faces: how the device talks to the plant. Each face is a folder with its own connection, Last Will and
topics, and hands commands to edge.commands (one parser, one retained-command guard):

- mqtt_json: the JSON MQTT API (topic table, publishing, command routing, the JSON Schema CLI);
- sparkplug: the Sparkplug B 3.0 edge node;
- opcua: the OPC UA server (asyncua, own thread and loop; [opcua], off by default);
- web: the live-view page (aiohttp, own thread and loop; [web], off by default).

MQTT faces share edge.faces.mqtt_session: each owns one MqttSession (the network thread that connects,
backs off and reconnects) and is its SessionFace, handed to it at construction; the session asks the face
for the client of every attempt (the JSON face reconnects its one client, the Sparkplug node makes a new one
per bdSeq) and tells it when the connection is up, down, at every tick and before it says goodbye. A face
never imports another face. May import: edge.util, edge.commands, edge.config, edge.results; not
edge.scoring or edge.stores."""
