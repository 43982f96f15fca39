"""dali-gop: demuxer-free GOP video loading for training, on NVIDIA DALI."""
__version__ = "0.1.0"
