"""What every analysis stands on: input checks, the kernel backends, the CPU's ISA, the model adapter
(layers, final norm, unembedding as plain tensors) and residual capture during the forward."""
