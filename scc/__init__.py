"""scc: weakly supervised semantic correspondence (model, data, training, evaluation) on scc_kernels."""
