"""Trust: the bundle manifest (schema, hashes, numbers) and its Ed25519 signature; a bundle is used only after
edge.trust.manifest.verify_bundle says so. Which precision a bundle and this machine suit, and the fix a
missing precision's error suggests (precision_hints).

May import: edge.util, edge.config, edge.capture (the manifest describes its preprocessing)."""
