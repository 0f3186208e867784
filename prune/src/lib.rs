//! pibench-prune: trains and ReLU-masks networks on libtorch and exports them as pibench model files.
