"""JupyterLab on the project's notebooks (``make lab``): saving keeps them as they are committed.

Notebooks are committed without outputs and with ``language_info = {"name": "python"}``
(:func:`cmp_utils.reporting.notebook_tools.build_notebook`). Two things keep ``git status`` clean around
JupyterLab:

* :func:`pre_save_hook` (``make lab`` passes ``--ContentsManager.pre_save_hook=cmp_utils.tools.lab.pre_save_hook``):
  when a kernel starts, JupyterLab fills ``language_info`` from it (Python version, lexer, mimetype) and
  saves that, even if no cell was run; the hook reduces it to the committed ``{"name": ...}`` before
  every save. Opening and saving a notebook therefore leaves the file byte-identical.
* the ``nbstripout`` git filter (``make setup`` / ``make git-filter``, ``.gitattributes``) strips
  outputs, execution counts and the same metadata when git reads a notebook, so ``git diff`` shows
  nothing after cells were run and saved, and nothing of it can be committed. (``git status`` may
  still list such a notebook, because its size changed, until ``git add`` or ``make clean-notebooks``.)
"""

from __future__ import annotations

from typing import Any


def pre_save_hook(model: dict[str, Any], path: str = "", **kwargs: Any) -> None:
    """Jupyter server pre-save hook: reduce a notebook's ``language_info`` to its ``name`` (in place).

    Outputs are kept (the user sees them on reopening); other files pass untouched.
    """
    if model.get("type") != "notebook" or not isinstance(model.get("content"), dict):
        return
    metadata = model["content"].setdefault("metadata", {})
    language_info = metadata.get("language_info")
    if isinstance(language_info, dict) and "name" in language_info:
        metadata["language_info"] = {"name": language_info["name"]}
