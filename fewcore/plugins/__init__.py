"""fewcore's built-in plugins: backbones, samplers, learners and datasets."""
