"""Service: the composition root (edge.service.daemon builds config -> sources -> models -> faces ->
health and owns shutdown), the publish thread, the changeover thread, the edge-run CLI, --check-config,
health and the systemd watchdog, and how a run ends (edge.service.run_end: the end of every video, the last
log line).

May import: every other stage. Nothing imports it."""
