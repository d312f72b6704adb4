"""Input: image files, MATLAB-exact bicubic, the training pipeline, benchmark sets."""
