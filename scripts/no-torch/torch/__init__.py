# Put on PYTHONPATH by the Makefile while cargo builds and tests: any Python
# process that the build starts and that tries `import torch` fails loudly.
# The build must find libtorch through LIBTORCH (scripts/env.sh), never by
# importing torch, which the minimal install on a fresh machine cannot do.
raise ImportError(
    "pibench: the build tried to `import torch` (is LIBTORCH_USE_PYTORCH set?); "
    "it must use LIBTORCH from scripts/env.sh instead"
)
