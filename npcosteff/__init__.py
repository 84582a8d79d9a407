"""npcosteff: COST-EFF in NumPy and Numba."""
