"""Performance measurement: primitive counts, trace summaries, deviceless compiles."""
