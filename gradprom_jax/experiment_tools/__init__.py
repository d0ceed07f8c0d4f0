"""Method × seed comparisons, their plots and the paired evidence statistics."""
