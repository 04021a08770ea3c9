"""Stage 3, patch data: patch datasets (from slides or image folders), the patch sources a
datamodule draws from, augmentation, the datamodule, and the frozen-trunk feature cache."""
