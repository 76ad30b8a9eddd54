"""Model builders (one module per family) and the name -> builder registry."""
