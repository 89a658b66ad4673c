"""Array operations shared by models and objectives (boxes)."""
