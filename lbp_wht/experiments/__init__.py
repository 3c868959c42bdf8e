"""Everything around the method core that describes the paper's experiments.

* :mod:`lbp_wht.experiments.vocab` -- the vocabulary (methods, selections, scopes, models,
  datasets, tags); standard library only.
* :mod:`lbp_wht.experiments.methods`, :mod:`lbp_wht.experiments.models` -- one spec per
  training method and per model (every fact about each in its entry); standard library only.
* :mod:`lbp_wht.experiments.catalog` -- which runs make up each paper table, and the one
  resolver from a table row to its config file; standard library only.
* :mod:`lbp_wht.experiments.presets` -- the conversion rules and trainable globs per model,
  method and scope, read from the two specs, and ``model_config``, the one builder of every
  model's definition; standard library only.
* :mod:`lbp_wht.experiments.runs` -- table and grid runs as sweep runs, option-key checks,
  the config digest a run will record.
* :mod:`lbp_wht.experiments.configs` -- generation of the experiment configs under
  ``configs/``.
* :mod:`lbp_wht.experiments.pretrained` -- the pretrained checkpoints the configs load.
"""
