"""Studies of the balancers on traces and generated problems; may import every package."""
