"""Capture: cameras (OpenCV / GStreamer sources, one grabber thread each) -> frames in latest-frame slots, and
the preprocessing that turns a frame region into model input (resize, letterbox, colour order); opening a
camera briefly for --check-config (camera_probe) and OpenCV's own log level (opencv_log).

Data flows on to edge.scoring. May import: edge.util, edge.config."""
