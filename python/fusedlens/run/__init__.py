"""The corpus job behind `fusedlens run`: one forward per batch feeding the lens and probe sums,
checkpoints, per-token records, and the outputs a run leaves behind."""
