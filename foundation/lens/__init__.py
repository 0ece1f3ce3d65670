"""TransformerLens's surface, written once for both twins: hook points, the activation cache and
its views, factored matrices, LayerNorm folding, the tokenizer and the run helpers."""
