"""StackGAN: paper-faithful text-to-image GAN (Zhang et al., ICCV 2017) for CUB-200-2011.

A library with command-line entry points (``stackgan --help``). It never imports the
workflow package ``pipeline`` or snakemake.
"""

__version__ = "0.1.0"
