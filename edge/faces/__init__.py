"""Faces: how the device talks to the plant. Each face is a folder with its own connection, Last Will and
topics, and hands commands to edge.commands (one parser, one retained-command guard):

- mqtt_json: the JSON MQTT API (topic table, publishing, command routing, the JSON Schema CLI);
- sparkplug: the Sparkplug B 3.0 edge node;
- the next faces (an OPC UA server, a web view) go here as opcua/ and web/, beside these two.

MQTT faces share edge.faces.mqtt_session: each owns one MqttSession (the network thread that connects,
backs off and reconnects) and is its SessionFace, handed to it at construction; the session asks the face
for the client of every attempt (the JSON face reconnects its one client, the Sparkplug node makes a new one
per bdSeq) and tells it when the connection is up, down, at every tick and before it says goodbye. A face
never imports another face. May import: edge.util, edge.commands, edge.config, edge.results; not
edge.scoring or edge.stores."""
