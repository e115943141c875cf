"""The five notebooks in run order, and how their kernels are started: what the headless run
(:mod:`helpers.tools.reproduce`) and the lab (:mod:`helpers.tools.lab`) share. It imports neither torch
nor Jupyter, so that `make lab` starts JupyterLab without loading them first."""

from __future__ import annotations

NOTEBOOKS = ("01_data_exploration.ipynb", "02_model1_frozen_encoder.ipynb", "03_model2_finetuned.ipynb",
             "04_model3_unet_decoder.ipynb", "05_comparison.ipynb")  # in numbered order; 05 reads 02, 03 and 04

# The kernel's channels are encrypted (CurveZMQ keys made by jupyter_client for each kernel whose
# kernelspec declares support, as ipykernel's does), so the kernel has no plain-TCP warning to give.
KERNEL_CONFIG = {"KernelManager": {"transport_encryption": "auto"}}


def kernel_manager_class():
    """jupyter_client's kernel manager, launching the kernel process with its own stdout and stderr
    in a file (``output_file``), not the console: what the kernel process itself logs (ipykernel's
    "KeyboardInterrupt caught in kernel" when jupyter_client interrupts it on shutdown, a warning of a
    library) lands in the run's output log beside what its cells print."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import Unicode

    class LoggedKernelManager(AsyncKernelManager):
        output_file = Unicode(None, allow_none=True, config=True,
                              help="file that receives the kernel process's own stdout and stderr (appended to)")

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            if not self.output_file:
                return await super()._async_launch_kernel(kernel_cmd, **kw)
            with open(self.output_file, "ab") as out:  # the kernel keeps its own copy of the descriptor
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": out, "stderr": out})

    return LoggedKernelManager
