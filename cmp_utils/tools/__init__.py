"""Command-line tools, each run as ``python -m cmp_utils.tools.<name>``: ``bench``, ``gpu_check``,
``convert_tf``, ``check_results``, ``run_notebooks``, ``cpu_probe``, and ``lab`` (JupyterLab's pre-save hook).
Nothing imports a tool except another tool.
"""
