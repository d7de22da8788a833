"""Benchmark plugin: the Lite0 ImageNet weights (``autotl[lite0]``) at a CPU-sized input.

Registers ``bench/efficientnet_lite0@<size>`` with the first-party plugin's loader, at the size in
``AUTOTL_LITE0_BENCH_SIZE`` (default 128 px), so a search with real pretrained weights fits a CPU.
"""
import os

from autotl import hookimpl


@hookimpl
def autotl_register_source_models(register):
    from autotl_lite0 import lite0_source, weights_path

    if weights_path() is None:
        return
    size = int(os.environ.get("AUTOTL_LITE0_BENCH_SIZE", "128"))
    register(lite0_source(name=f"bench/efficientnet_lite0@{size}", input_size=size))
