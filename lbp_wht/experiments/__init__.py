"""Everything around the method core that describes the paper's experiments.

* :mod:`lbp_wht.experiments.vocab` -- the vocabulary (methods, selections, scopes, models,
  datasets, tags); standard library only.
* :mod:`lbp_wht.experiments.catalog` -- which runs make up each paper table, and the one
  resolver from a table row to its config file; standard library only.
* :mod:`lbp_wht.experiments.presets` -- the paper's layer choices per model, method and scope
  (conversion rules, trainable globs) and ``model_config``, the one definition of every model;
  standard library only.
* :mod:`lbp_wht.experiments.runs` -- table and grid runs as sweep runs, option-key checks,
  the config digest a run will record.
* :mod:`lbp_wht.experiments.configs` -- generation of the experiment configs under
  ``configs/``.
* :mod:`lbp_wht.experiments.pretrained` -- the pretrained checkpoints the configs load.
"""
