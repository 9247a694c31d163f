"""The reference pre-activation ResNet, the adaptive multi-label loss and TF1 checkpoint loading."""
