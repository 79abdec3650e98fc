"""Tools a person runs beside the product: ``edge-demo`` (the whole pipeline on generated parts, in one
command), ``edge-onboard`` (a new product from the line, end to end) and the throw-away local MQTT broker
they, the benchmarks and the tests start. Not benchmarks (those are in ``benchmarks/``) and not shipped to
the device (``edge/`` never imports this package)."""
