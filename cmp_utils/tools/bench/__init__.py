"""The benchmarks behind ``make bench`` (``python -m cmp_utils.tools.bench``): every figure measured side by side
and reported as a ratio.

Modules: ``timing`` (interleaved timing, peak memory, rows), ``steps`` (training steps, the GPU, the
pinned numerics' cost), ``kernels`` (metrics, data, losses, vendor kernels), ``run`` (the groups and the command
line; its docstring lists the groups and the CSV columns).
"""

from .timing import (
    COLUMNS,
    GROUPS,
    EVAL_GOAL_SECONDS,
    PIPELINE_EFFICIENCY_GOAL,
    Rows,
    time_interleaved,
    median,
    measure_peak_memory,
)
from .steps import (
    RunTrainer,
    bench_training_step,
    GPU_MODES,
    paper_step_settings,
    PaperStep,
    paper_batch,
    bench_gpu,
    bench_numerics,
)
from .kernels import (
    bench_evaluation,
    bench_positives_per_query,
    bench_data,
    bench_losses,
    bench_vendor_kernels,
)
from .run import (
    group_settings,
    BENCHMARKS,
    run,
    main,
)

__all__ = [
    "COLUMNS",
    "GROUPS",
    "EVAL_GOAL_SECONDS",
    "PIPELINE_EFFICIENCY_GOAL",
    "Rows",
    "time_interleaved",
    "median",
    "measure_peak_memory",
    "RunTrainer",
    "bench_training_step",
    "GPU_MODES",
    "paper_step_settings",
    "PaperStep",
    "paper_batch",
    "bench_gpu",
    "bench_numerics",
    "bench_evaluation",
    "bench_positives_per_query",
    "bench_data",
    "bench_losses",
    "bench_vendor_kernels",
    "group_settings",
    "BENCHMARKS",
    "run",
    "main",
]
