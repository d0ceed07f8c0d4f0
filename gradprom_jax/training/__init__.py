"""Training: the loop, its step, state, phases, optimisers and evaluation, and the machinery of a
run (checkpoints, preemption, parallelism, logging, locks, warm starts)."""
