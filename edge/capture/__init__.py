"""Capture: cameras (OpenCV / GStreamer sources, one grabber thread each) -> frames in latest-frame slots, and
the preprocessing that turns a frame region into model input (resize, letterbox, colour order).

Data flows on to edge.scoring. May import: edge.util, edge.config."""
