"""The paper's maths: gradient combiners, degradations, losses, metrics, the task-driven system
and the method table."""
