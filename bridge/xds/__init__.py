"""Translation: IR → Envoy resources. Pure: no I/O, no clocks, sorted output."""
