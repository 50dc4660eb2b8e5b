"""Every notebook executed once in the smoke profile, in the background, for tests/test_notebooks.py.

The smoke runs use one thread each, and so does most of the test suite: run one after the other,
they leave the second of CI's two cores idle. ``conftest.py`` therefore starts these runs (one
worker) when the session starts, beside the other tests, and ``test_notebooks.py`` adds a second
worker once it needs the results (the other tests are done by then) and waits for them.

The runs have their own results and cache folders, so the tests running meanwhile never see them.
Notebooks that train or reuse the same memoised run never run at the same time (``AFTER``): every
cuhk_pedes experiment notebook (05, 09-13) runs in its usual order, 05 first; 12 also reuses 06's
flickr30k run. ``CHECK_RESULTS``, the cold rerun of notebook 10 by ``make check-results``, runs once
05 and 10 are done. Notebooks not named here (new ones) run last, one by one, in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHECK_RESULTS = "check-results --cold 10_ablation"
# The order jobs are taken in (the longest chain first), and what each waits for.
ORDER = [
    "05_cuhk_pedes",
    "06_flickr30k",
    "09_batch_size",
    "10_ablation",
    CHECK_RESULTS,
    "11_feature_distribution",
    "12_retrieval_demo",
    "13_fidelity_audit",
    "07_mscoco",
    "08_cub_flowers",
    "04_training",
    "01_data_preparation",
    "03_cmpc_derivation",
    "02_cmpm_derivation",
    "00_environment",
]
AFTER = {
    "09_batch_size": ["05_cuhk_pedes"],
    "10_ablation": ["09_batch_size"],
    CHECK_RESULTS: ["05_cuhk_pedes", "10_ablation"],
    "11_feature_distribution": ["10_ablation"],
    "12_retrieval_demo": ["11_feature_distribution", "06_flickr30k"],
    "13_fidelity_audit": ["12_retrieval_demo"],
}
# One process per worker runs its notebooks one by one (run_notebooks, as `make reproduce` does)
# and answers each with one line: the executed copy, or the traceback.
WORKER = """
import json, sys, traceback
from cmp_utils.tools.run_notebooks import run_notebooks
for line in sys.stdin:
    job = json.loads(line)
    try:
        [(executed, _)] = run_notebooks([job["path"]], "smoke", output_dir=job["output_dir"])
        reply = {"executed": str(executed)}
    except BaseException:
        reply = {"error": traceback.format_exc()}
    print("@@worker " + json.dumps(reply), flush=True)
"""


class SmokeNotebookRuns:
    """``start()`` workers, ``add_worker()``, ``wait()`` -> {job: outcome}: a notebook's outcome is
    ``{"executed": path}`` or ``{"error": text}``; CHECK_RESULTS's ``{"returncode", "stdout", "stderr"}``."""

    def __init__(self, folder: Path):
        self.results, self.cache = folder / "results", folder / "cache"
        self.output_dir = self.results / "executed" / "smoke"
        # One thread for what the notebooks run outside their training runs too (the runs fix their
        # own count, 1 in the smoke profile): a worker is meant to keep one core busy, not two.
        self.env = {
            **os.environ,
            "CMP_RESULTS_DIR": str(self.results),
            "CMP_CACHE_DIR": str(self.cache),
            "OMP_NUM_THREADS": "1",
        }
        self.paths = {path.stem: path for path in NOTEBOOKS}
        known = [name for name in ORDER if name in self.paths or name == CHECK_RESULTS]
        new = sorted(set(self.paths) - set(known))
        self.order = known + new
        self.after = {name: [b for b in AFTER.get(name, []) if b in self.order] for name in known}
        for index, name in enumerate(new):  # after everything else, one by one
            self.after[name] = self.order[: len(known) + index]
        self.outcomes: dict[str, dict] = {}
        self.taken: set[str] = set()
        self.condition = threading.Condition()
        self.threads: list[threading.Thread] = []
        self.processes: list[subprocess.Popen] = []
        self.stopping = False

    def start(self, workers: int = 1) -> "SmokeNotebookRuns":
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> None:
        thread = threading.Thread(target=self._work, daemon=True)
        self.threads.append(thread)
        thread.start()

    def wait(self) -> dict[str, dict]:
        for thread in list(self.threads):
            thread.join()
        return self.outcomes

    def stop(self) -> None:
        """End what still runs (a session stopped early): each worker's process group, kernels included."""
        with self.condition:
            self.stopping = True
            self.condition.notify_all()
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait()

    # -- inside a worker thread
    def _next_job(self) -> str | None:
        with self.condition:
            while True:
                if self.stopping:
                    return None
                left = [name for name in self.order if name not in self.taken]
                if not left:
                    return None
                for name in left:
                    if all(before in self.outcomes for before in self.after.get(name, [])):
                        self.taken.add(name)
                        return name
                self.condition.wait()

    def _work(self) -> None:
        worker = None
        try:
            while (name := self._next_job()) is not None:
                try:
                    if name == CHECK_RESULTS:
                        outcome = self._check_results()
                    else:
                        if worker is None or worker.poll() is not None:
                            worker = subprocess.Popen(
                                [sys.executable, "-c", WORKER],
                                cwd=ROOT,
                                env=self.env,
                                stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                text=True,
                                start_new_session=True,
                            )
                            self.processes.append(worker)
                        outcome = self._run_notebook(worker, name)
                except Exception as error:  # noqa: BLE001 -- reported by the notebook's own test
                    outcome = {"error": f"{error!r}", "returncode": None, "stdout": "", "stderr": ""}
                with self.condition:
                    self.outcomes[name] = outcome
                    self.condition.notify_all()
        finally:
            if worker is not None and worker.poll() is None:
                worker.stdin.close()
                worker.wait()

    def _run_notebook(self, worker: subprocess.Popen, name: str) -> dict:
        worker.stdin.write(json.dumps({"path": str(self.paths[name]), "output_dir": str(self.output_dir)}) + "\n")
        worker.stdin.flush()
        log = []
        for line in worker.stdout:
            if line.startswith("@@worker "):
                return json.loads(line[len("@@worker ") :])
            log.append(line)
        return {"error": "the worker process ended early:\n" + "".join(log)[-4000:]}

    def _check_results(self) -> dict:
        """``make check-results`` in the smoke profile, cold, for notebook 10 alone."""
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cmp_utils.tools.check_results",
                "--profile",
                "smoke",
                "--cold",
                "--against",
                "files",
                "--notebooks",
                str(self.paths["10_ablation"]),
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.processes.append(process)
        stdout, stderr = process.communicate()
        return {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}
