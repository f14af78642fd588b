"""`probe run` and `probe targets`: what they print and the exit status scripts act on."""
