"""ebsdnet."""
