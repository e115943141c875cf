"""The command-line tools, apart from what the notebooks import: the headless run (``reproduce``, with the
run-folder lock ``runlock``), JupyterLab on working copies (``lab``), the data folder's command line
(``data``), Model 3's ablation (``ablation``) and the training benchmark (``bench``). Each runs as
``python -m helpers.tools.<name>``; no notebook imports them.
"""
