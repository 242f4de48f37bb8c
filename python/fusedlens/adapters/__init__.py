"""Other tools' models and tensors: TransformerLens models as a `LensModel` (`transformer_lens`), the
HF model inside an nnsight wrapper and the residuals a trace `.save()`d (`nnsight`). Neither tool is
a dependency: each module touches only the objects it is handed."""
