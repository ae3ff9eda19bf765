"""AnomalyCLIP (Zhou et al., ICLR 2024): learned object-agnostic prompts, DPAM features, training and the
import of the released checkpoints. The scoring method is :mod:`zsad.methods.anomalyclip.method`."""
