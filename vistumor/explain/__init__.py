"""Stage 5, explanations: explanation methods (Grad-CAM++ and friends, saliency), their
localization scores against annotations, pictures, the per-epoch CAM monitor, and the
steps of the explain task (selection, report)."""
