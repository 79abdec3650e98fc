"""The live view: a web page on the station that shows what each camera sees, its scores and verdicts, and a
threshold control that takes the same path as MQTT ``threshold/set`` (source ``web``).

- live: :class:`LiveView`, told every result and camera change (as an ``ApiObserver``) and offered every
  published frame; it keeps only references, and makes a snapshot of a frame (its JPEG, its mask as a PNG
  overlay and its own result fields, together) only when a viewer asks, at most ``web.frame_fps`` per
  camera. No aiohttp here.
- evidence_routes: the evidence store's latest anomalous frames, through a reader the daemon hands in.
- server: the aiohttp application (routes, login, CSRF and Host checks) and :class:`WebServer`, its own
  thread with its own asyncio loop at the helper threads' priority. Imported only when ``[web]`` is enabled.
- static/: the page (plain HTML, CSS and a little JavaScript; no build step, nothing from a CDN).

edge.service.web_face wires it into the daemon. May import: edge.util, edge.commands, edge.config,
edge.capture (the frame type), edge.results; never another face, edge.scoring or edge.stores.
"""
