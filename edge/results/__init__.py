"""Results: what a scored frame becomes. Postprocessing (normalised score, regions, mask, heatmap), the
threshold book (the threshold in force per camera, kept across restarts), the typed payload documents
every face publishes (their floats rounded in one place: payload_numbers), the overlay pictures of
edge-run --save-overlays (overlays), the four verdicts (verdicts) and the part tracker (parts: triggers,
deadlines, combined verdicts). Pure: no threads of its own; the publish thread (edge.service.publish)
runs it.

May import: edge.util, edge.commands, edge.config, edge.capture, edge.trust."""
