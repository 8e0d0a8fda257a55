"""The decoder, its attention, its greedy and beam search, and the run directory."""
