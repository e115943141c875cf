"""Reproduction of a MobileNetV2 skin-lesion segmentation report on ISIC 2016 Part 1.

What the notebooks import, a module a subject:

- ``settings``: a run's settings (``RunConfig``, read from a settings file) and Model 3's named recipes;
- ``data``: which data a run uses and its splits, decoded at the working size; the external test sets;
- ``model``: the MobileNetV2 encoder, the report's decoder and the U-Net decoder, the layer table;
- ``training``: a model trained per seed, scored and saved, with the tables and figures of its runs
  (the loop itself: ``train``); ``metrics``: Jaccard and Dice; ``plots``: the report's figures;
  ``compare``: the comparison notebook's tables.

Below them, one subject each: ``paths``, ``errors``, ``io`` (atomic writes), ``progress``, ``images``
(one image or mask file), ``folders`` (an ISIC folder), ``pairing``, ``splits``, ``cache`` (the
preprocessing cache and Datasets), ``download``, ``synthetic`` (the demo set), ``external``,
``recipe`` (Model 3's ingredients), ``checkpoint`` (what training keeps on disk), ``train``,
``evaluate`` (scoring at the original size), ``overlays``.

``helpers.tools`` holds the command-line tools, which no notebook imports: the headless run
(``reproduce``, ``runlock``), JupyterLab (``lab``), the data folder's command line (``data``), the
ablation and the benchmark.
"""

__version__ = "0.1.0"
